// Command pause is the sandbox process of every pod on the local node.
//
// It holds the pod's namespaces open, reaps children that are reparented to it (it is PID 1 when a pod
// shares its process namespace) and exits at once on SIGTERM or SIGINT, so stopping a pod never waits for
// a grace period.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
