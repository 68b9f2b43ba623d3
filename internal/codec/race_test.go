//go:build race

package codec

// raceEnabled makes the exhaustive corruption tests sample positions instead:
// the race detector slows them down a hundredfold and they exercise no
// concurrency.
const raceEnabled = true
