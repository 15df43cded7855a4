package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/ftpgate/ftpgate/nft"
	"github.com/ftpgate/ftpgate/proxy"
)

// statusReport is what the running daemon serves on /status.
type statusReport struct {
	Version        string              `json:"version"`
	Mode           string              `json:"mode"`
	Sessions       []proxy.SessionInfo `json:"sessions"`
	PinholesActive int                 `json:"pinholes_active"`
	Pinholes       []nft.PinholeInfo   `json:"pinholes"`
}

// statusCmd asks the running daemon (on --metrics-listen) what it is doing.
func statusCmd(args []string, w io.Writer) error {
	o, err := parseOptions("status", args)
	if err != nil {
		return err
	}
	url := "http://" + o.metricsListen + "/status"
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return fmt.Errorf("cannot reach the running ftpgate at %s: %v — is it running, with the same --metrics-listen? Give the daemon's config: ftpgate status --config /etc/ftpgate/ftpgate.yaml", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%s: %s — the daemon runs with --status-endpoint=false; turn it on to use 'ftpgate status'", url, resp.Status)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		return fmt.Errorf("%s: %s — the daemon is still starting (setting up its nftables table and listeners); try again in a moment", url, resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	var st statusReport
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("%s: %v", url, err)
	}
	fmt.Fprintf(w, "ftpgate %s, %s mode: %d sessions, %d pinholes open\n", st.Version, st.Mode, len(st.Sessions), st.PinholesActive)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(st.Pinholes) > 0 {
		fmt.Fprintln(tw, "\nPINHOLE\tEXPIRES IN")
		for _, p := range st.Pinholes {
			fmt.Fprintf(tw, "%s\t%s\n", p.Desc, time.Until(p.Expires).Round(time.Second))
		}
		tw.Flush()
	}
	if len(st.Sessions) == 0 {
		return nil
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "ID\tCLIENT\tSERVER\tUSER\tAGE\tCOMMANDS\tAWAITING")
	for _, s := range st.Sessions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\n", s.ID, s.Client, s.Server, s.User,
			time.Since(s.Started).Round(time.Second), s.Commands, s.Pending)
	}
	return tw.Flush()
}
