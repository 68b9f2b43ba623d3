// Package pg holds what walferry knows about PostgreSQL itself, independent of
// any storage: log sequence numbers, WAL file names for every segment size
// PostgreSQL allows, timeline history files, the binary control file
// (global/pg_control) and connection helpers.
//
// Nothing here talks to object storage, and nothing here exits the process:
// every failure is returned as an error that names what was being read.
package pg
