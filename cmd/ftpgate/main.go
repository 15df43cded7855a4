// Command ftpgate is an FTP-aware firewall helper for Linux gateways: it
// proxies FTP control connections and opens exactly the negotiated data
// connections in nftables.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `ftpgate — FTP-aware firewall/NAT helper for Linux gateways

Usage:
  ftpgate [run] [flags]   run the gateway (default)
  ftpgate check [flags]   check kernel support, privileges and the host firewall
  ftpgate status [flags]  show the running daemon's sessions and pinholes
  ftpgate version         print the version

Run 'ftpgate run -h' or 'ftpgate check -h' for flags.
`

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runCmd(args)
	case "check":
		var ok bool
		ok, err = checkCmd(args, os.Stdout)
		if err == nil && !ok {
			os.Exit(1)
		}
	case "status":
		err = statusCmd(args, os.Stdout)
	case "version":
		fmt.Println("ftpgate", version)
	case "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "ftpgate: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ftpgate:", err)
		os.Exit(1)
	}
}
