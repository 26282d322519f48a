package main

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
)

// commands are the subcommands offered by completion, with the positional
// words each takes (files and PIDs are left to the shell).
var commands = map[string][]string{
	"launch": nil, "status": {"peers", "connections", "ipam", "policy"},
	"connect": nil, "forget": nil, "rmpeer": nil, "forget-identity": nil, "reset": nil, "leave": nil,
	"attach": nil, "detach": nil, "keygen": nil, "rotate": nil,
	"completion": {"bash", "zsh", "fish"}, "version": nil,
}

// commandFlags asks each command for its help text and keeps its flag
// names, so completion never lists flags a command does not have.
func commandFlags(cmd string) []string {
	var buf bytes.Buffer
	run([]string{cmd, "-h"}, io.Discard, &buf)
	var out []string
	for _, line := range strings.Split(buf.String(), "\n") {
		if f, ok := strings.CutPrefix(line, "  -"); ok {
			out = append(out, "-"+strings.Fields(f)[0])
		}
	}
	return out
}

func completion(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "Usage: mesh completion bash|zsh|fish")
		return errUsage
	}
	names := make([]string, 0, len(commands))
	for c := range commands {
		names = append(names, c)
	}
	sort.Strings(names)
	switch args[0] {
	case "bash":
		writeBash(stdout, names)
	case "zsh":
		// zsh runs bash completion functions through bashcompinit.
		fmt.Fprintln(stdout, "#compdef mesh\nautoload -U +X bashcompinit && bashcompinit")
		writeBash(stdout, names)
	case "fish":
		writeFish(stdout, names)
	default:
		fmt.Fprintf(stderr, "mesh completion: unknown shell %q (want bash, zsh or fish)\n", args[0])
		return errUsage
	}
	return nil
}

func writeBash(w io.Writer, names []string) {
	fmt.Fprintln(w, "# mesh completion for bash: source <(mesh completion bash)")
	fmt.Fprintln(w, "_mesh() {")
	fmt.Fprintln(w, `  local cur=${COMP_WORDS[COMP_CWORD]} words=""`)
	fmt.Fprintln(w, `  if [ "$COMP_CWORD" -eq 1 ]; then`)
	fmt.Fprintf(w, "    COMPREPLY=($(compgen -W %q -- \"$cur\")); return\n", strings.Join(names, " "))
	fmt.Fprintln(w, "  fi")
	fmt.Fprintln(w, `  case "${COMP_WORDS[1]}" in`)
	for _, c := range names {
		words := append(commandFlags(c), commands[c]...)
		fmt.Fprintf(w, "    %s) words=%q ;;\n", c, strings.Join(words, " "))
	}
	fmt.Fprintln(w, "  esac")
	fmt.Fprintln(w, `  COMPREPLY=($(compgen -W "$words" -- "$cur"))`)
	fmt.Fprintln(w, `  [ ${#COMPREPLY[@]} -gt 0 ] || COMPREPLY=($(compgen -f -- "$cur"))`)
	fmt.Fprintln(w, "}")
	fmt.Fprintln(w, "complete -F _mesh mesh")
}

func writeFish(w io.Writer, names []string) {
	fmt.Fprintln(w, "# mesh completion for fish: mesh completion fish | source")
	fmt.Fprintln(w, "complete -c mesh -f")
	fmt.Fprintf(w, "complete -c mesh -n __fish_use_subcommand -a %q\n", strings.Join(names, " "))
	for _, c := range names {
		cond := "__fish_seen_subcommand_from " + c
		for _, f := range commandFlags(c) {
			if long, ok := strings.CutPrefix(f, "--"); ok {
				fmt.Fprintf(w, "complete -c mesh -n %q -l %s\n", cond, long)
			} else {
				fmt.Fprintf(w, "complete -c mesh -n %q -s %s\n", cond, strings.TrimPrefix(f, "-"))
			}
		}
		if len(commands[c]) > 0 {
			fmt.Fprintf(w, "complete -c mesh -n %q -a %q\n", cond, strings.Join(commands[c], " "))
		}
	}
}
