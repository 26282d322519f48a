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

// Texts of the pinned memberlist's log lines that carry events it reports
// nowhere else. memberlist's exported Node.State is not kept up to date, so
// its own probe's verdict "suspect" exists only as this log line; a
// memberlist upgrade that rewords either text would silently change what
// the daemon sees, so TestMemberlistLogTextsPinned checks them against the
// module's source.
const (
	// suspectLine is the format memberlist logs (after "[INFO] memberlist: ")
	// when this node's own probe of a node failed.
	suspectLine = "Suspect %s has failed, no acks received"
	// decryptFailure is in the error memberlist logs for gossip that none
	// of the installed keys decrypts: another mesh, or a wrong password.
	decryptFailure = "no installed keys could decrypt"
)

// suspectedName returns the node name in a suspect line (without level and
// "memberlist: " prefix).
func suspectedName(s string) (string, bool) {
	before, after, ok := strings.Cut(suspectLine, "%s")
	if !ok {
		return "", false
	}
	rest, ok := strings.CutPrefix(s, before)
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, after)
	if !ok || name == "" {
		return "", false
	}
	return name, true
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
		if name, ok := suspectedName(s); ok && w.suspect != nil {
			w.suspect(name)
		}
		if strings.Contains(s, decryptFailure) {
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
