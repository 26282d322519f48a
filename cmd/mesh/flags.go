package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// setUsage makes fs print header and then its flags in the form they are
// documented and usually typed: --long-name, and -o for one letter. (The
// flag package accepts both one and two dashes.)
func setUsage(fs *flag.FlagSet, w io.Writer, header string) {
	fs.Usage = func() {
		fmt.Fprint(w, header)
		printFlags(w, fs)
	}
}

func flagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		line := "  " + flagName(f.Name)
		if arg != "" {
			line += " " + strings.ToUpper(arg)
		}
		fmt.Fprintln(w, line)
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s%s\n", usage, def)
	})
}

// flagNames lists fs's flags as typed on the command line, for completion.
func flagNames(fs *flag.FlagSet) []string {
	var out []string
	fs.VisitAll(func(f *flag.Flag) { out = append(out, flagName(f.Name)) })
	return out
}
