// Package promtext writes metrics in the Prometheus text exposition format
// (version 0.0.4), the format every Prometheus server scrapes.
//
// The daemon reads its state at scrape time and has no metric it updates
// in between, so it needs neither registries nor metric vectors: only
// descriptions and a writer. The Prometheus client library would give it
// those at a cost of about 4 MiB of resident memory at idle (its init and
// the protobuf runtime it links), more than a tenth of the daemon's bound
// (docs/performance.md, "Idle memory").
package promtext

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Type is a metric family's type as the format names it.
type Type string

const (
	Gauge   Type = "gauge"
	Counter Type = "counter"
)

// ContentType is the media type of what WriteTo writes.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

var (
	nameRE  = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// Desc describes one metric family. Descs are created once, at package
// initialisation, and are read-only afterwards.
type Desc struct {
	name   string
	help   string
	typ    Type
	labels []string
}

// NewDesc describes a family; it panics on a name or label name the format
// does not allow, which is a programming error found by any test that
// initialises the package.
func NewDesc(name, help string, typ Type, labels ...string) *Desc {
	if !nameRE.MatchString(name) {
		panic(fmt.Sprintf("promtext: invalid metric name %q", name))
	}
	for _, l := range labels {
		if !labelRE.MatchString(l) || strings.HasPrefix(l, "__") {
			panic(fmt.Sprintf("promtext: invalid label name %q of %s", l, name))
		}
	}
	if typ != Gauge && typ != Counter {
		panic(fmt.Sprintf("promtext: invalid type %q of %s", typ, name))
	}
	return &Desc{name: name, help: help, typ: typ, labels: labels}
}

// Name is the family's name.
func (d *Desc) Name() string { return d.name }

type sample struct {
	values []string
	v      float64
}

// Set gathers the samples of one scrape. It is not safe for concurrent use:
// one scrape fills one Set.
type Set struct {
	order    []*Desc
	families map[*Desc][]sample
	err      error
}

// Add records one sample of d with the label values in d's label order. A
// wrong number of label values or a second sample with the same values is
// a programming error: it is dropped and reported by WriteTo, which then
// writes nothing.
func (s *Set) Add(d *Desc, v float64, labelValues ...string) {
	if len(labelValues) != len(d.labels) {
		s.fail(fmt.Errorf("metric %s: %d label values for labels %q", d.name, len(labelValues), d.labels))
		return
	}
	if s.families == nil {
		s.families = map[*Desc][]sample{}
	}
	samples, seen := s.families[d]
	if !seen {
		s.order = append(s.order, d)
	}
	for _, o := range samples {
		if slices.Equal(o.values, labelValues) {
			s.fail(fmt.Errorf("metric %s: two samples with labels %q", d.name, labelValues))
			return
		}
	}
	s.families[d] = append(samples, sample{values: slices.Clone(labelValues), v: v})
}

func (s *Set) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

// WriteTo writes the families in the order of their first sample, each
// with its HELP and TYPE lines and its samples sorted by label values (so
// that two scrapes of the same state are byte for byte the same).
func (s *Set) WriteTo(w io.Writer) (int64, error) {
	if s.err != nil {
		return 0, s.err
	}
	cw := &countWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, d := range s.order {
		samples := s.families[d]
		slices.SortFunc(samples, func(a, b sample) int { return slices.Compare(a.values, b.values) })
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", d.name, helpEscaper.Replace(d.help), d.name, d.typ)
		for _, sm := range samples {
			bw.WriteString(d.name)
			if len(d.labels) > 0 {
				bw.WriteByte('{')
				for i, l := range d.labels {
					if i > 0 {
						bw.WriteByte(',')
					}
					fmt.Fprintf(bw, "%s=\"%s\"", l, valueEscaper.Replace(sm.values[i]))
				}
				bw.WriteByte('}')
			}
			bw.WriteByte(' ')
			bw.WriteString(formatValue(sm.v))
			bw.WriteByte('\n')
		}
	}
	err := bw.Flush()
	return cw.n, err
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	valueEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Handler serves the samples collect adds, gathered anew for each request.
// collect runs on the request's goroutine; concurrent scrapes call it
// concurrently.
func Handler(collect func(*Set)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s Set
		collect(&s)
		var b strings.Builder
		if _, err := s.WriteTo(&b); err != nil {
			http.Error(w, "collecting metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", ContentType)
		io.WriteString(w, b.String())
	})
}
