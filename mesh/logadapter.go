package mesh

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
)

// logWriter turns memberlist's "[LEVEL] memberlist: text" lines into slog
// records, so one log stream carries both and levels mean the same thing.
type logWriter struct {
	log *slog.Logger
	// suspect is told of nodes this node's own probes suspect, which
	// memberlist reports nowhere but in its log.
	suspect func(name string)
}

// logTags are memberlist's level prefixes.
var logTags = []struct {
	tag   string
	level slog.Level
}{{"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo}, {"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}}

func (w logWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := string(line)
		level := slog.LevelInfo
		for _, t := range logTags {
			if i := strings.Index(s, t.tag); i >= 0 {
				level, s = t.level, strings.TrimSpace(s[i+len(t.tag):])
				break
			}
		}
		s = strings.TrimPrefix(s, "memberlist: ")
		if rest, ok := strings.CutPrefix(s, "Suspect "); ok && w.suspect != nil {
			if name, _, found := strings.Cut(rest, " has failed"); found {
				w.suspect(name)
			}
		}
		if strings.Contains(s, "no installed keys could decrypt") {
			from := ""
			if i := strings.Index(s, "from="); i >= 0 {
				from = s[i+len("from="):]
			}
			w.log.Warn("rejected gossip that this mesh's key cannot decrypt: wrong mesh password?", "from", from)
			continue
		}
		// memberlist reports every probe of an unreachable node at ERR;
		// the daemon's own state (suspect/dead) says that better.
		if level == slog.LevelError && strings.Contains(s, "Failed to send") {
			level = slog.LevelDebug
		}
		w.log.Log(context.Background(), level, s)
	}
	return len(p), nil
}
