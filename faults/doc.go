// Package faults is walferry's fault suite (`make test-faults`): it runs the
// binary against real PostgreSQL 15 and MinIO while the network between
// walferry and the store misbehaves (toxiproxy and a small HTTP front that
// answers 500 / 503 SlowDown), while processes are killed with SIGKILL,
// while disks fill up or turn read-only, while PostgreSQL crashes under a
// backup, and while objects in the store are damaged, and checks the
// promises of docs/guarantees.md after every trial.
//
// Each trial ends in one of: ok (the operation succeeded and its data was
// checked byte for byte or row for row), clear error (it failed within its
// documented limit with its documented exit code and a message naming the
// store or object), unclear error, data lost, hang. The suite prints one
// table of them, fault x operation, and fails when any trial lost data,
// hung or failed unclearly.
//
// The tests carry the build tag "faults", so `go test ./...` (make test)
// leaves them out; `make test-faults` runs them with -tags faults. Replay
// the random choices of a run with WALFERRY_FAULT_SEED=<the printed seed>.
// The package has no non-test code besides this comment.
package faults
