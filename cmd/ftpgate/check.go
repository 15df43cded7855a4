package main

import (
	"fmt"
	"io"

	"github.com/ftpgate/ftpgate/nft"
)

// checkCmd prints what the gateway needs and whether it has it; ok is false
// when something must be fixed before 'ftpgate run' works. It validates the
// settings exactly as run does first, so that a config check passes also
// means the daemon accepts the config.
func checkCmd(args []string, w io.Writer) (ok bool, err error) {
	o, err := parseOptions("check", args)
	if err != nil {
		return false, err
	}
	_, cfg, err := o.validate()
	if err != nil {
		return false, err
	}
	ok = true
	for _, f := range nft.Check(cfg) {
		mark := "ok  "
		if !f.OK {
			mark, ok = "FAIL", false
		}
		fmt.Fprintf(w, "%s %s\n", mark, f.What)
		if !f.OK && f.Fix != "" {
			fmt.Fprintf(w, "     fix: %s\n", f.Fix)
		}
	}
	return ok, nil
}
