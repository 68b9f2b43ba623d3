package repo

import (
	"context"
	"path"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/storage"
)

// Info summarizes what a repository holds.
type Info struct {
	Repository string         `json:"repository"`
	Metadata   Metadata       `json:"metadata"`
	Timelines  []TimelineInfo `json:"timelines"`
	// HistoryFiles, BackupLabels and Partials count the other WAL archive files.
	HistoryFiles int       `json:"history_files"`
	BackupLabels int       `json:"backup_labels"`
	Partials     int       `json:"partials"`
	WALBytes     int64     `json:"wal_bytes"`
	Backups      int       `json:"backups"`
	BackupBytes  int64     `json:"backup_bytes"`
	OtherObjects int       `json:"other_objects"`
	LastWALTime  time.Time `json:"last_wal_time,omitzero"`
}

// TimelineInfo describes the segments archived on one timeline.
type TimelineInfo struct {
	Timeline pg.TimeLineID `json:"timeline"`
	Segments int           `json:"segments"`
	First    string        `json:"first"`
	Last     string        `json:"last"`
	// Gaps counts missing segments between First and Last.
	Gaps int `json:"gaps"`
}

// Inspect lists the repository and summarizes it.
func (r *Repo) Inspect(ctx context.Context) (Info, error) {
	info := Info{Repository: r.String(), Metadata: r.meta}
	size, err := r.meta.SegmentSize()
	if err != nil {
		return info, err
	}
	type span struct {
		count       int
		first, last pg.SegNo
		firstName   string
		lastName    string
	}
	spans := map[pg.TimeLineID]*span{}
	var order []pg.TimeLineID
	err = r.store.List(ctx, "", func(oi storage.ObjectInfo) error {
		switch {
		case strings.HasPrefix(oi.Key, WALPrefix):
			info.WALBytes += oi.Size
			if oi.ModTime.After(info.LastWALTime) {
				info.LastWALTime = oi.ModTime
			}
			f, ok := ParseWALKey(oi.Key, size)
			if !ok {
				info.OtherObjects++
				return nil
			}
			switch f.Kind {
			case pg.KindHistory:
				info.HistoryFiles++
			case pg.KindBackup:
				info.BackupLabels++
			case pg.KindPartial:
				info.Partials++
			case pg.KindSegment:
				s := spans[f.TLI]
				if s == nil {
					s = &span{first: f.SegNo, firstName: path.Base(oi.Key)}
					spans[f.TLI] = s
					order = append(order, f.TLI)
				}
				s.count++
				if f.SegNo < s.first {
					s.first, s.firstName = f.SegNo, path.Base(oi.Key)
				}
				if f.SegNo >= s.last {
					s.last, s.lastName = f.SegNo, path.Base(oi.Key)
				}
			}
		case strings.HasPrefix(oi.Key, BackupsPrefix):
			info.BackupBytes += oi.Size
			if path.Base(oi.Key) == "manifest" {
				info.Backups++
			}
		case oi.Key == MetadataKey, strings.HasPrefix(oi.Key, LineagePrefix):
		default:
			info.OtherObjects++
		}
		return nil
	})
	if err != nil {
		return info, err
	}
	for _, tli := range order {
		s := spans[tli]
		info.Timelines = append(info.Timelines, TimelineInfo{
			Timeline: tli, Segments: s.count, First: s.firstName, Last: s.lastName,
			Gaps: int(s.last-s.first+1) - s.count,
		})
	}
	return info, nil
}
