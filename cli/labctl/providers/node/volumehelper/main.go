// Command volumehelper creates and deletes the directories behind local-path-provisioner's volumes.
//
// local-path-provisioner runs it in a short-lived helper pod on the node, as its configured setupCommand and
// teardownCommand, with the arguments `-p PATH -s SIZE -m MODE -a create|delete`. It does what the
// provisioner's default shell scripts do (`mkdir -m 0777 -p` and `rm -rf`) without needing a shell in the
// image.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	path := flag.String("p", "", "the volume's directory (absolute)")
	flag.String("s", "0", "the requested size in bytes (a directory has no size)")
	mode := flag.String("m", "Filesystem", "the volume mode")
	action := flag.String("a", "", "create or delete")
	flag.Parse()

	if err := run(*path, *mode, *action); err != nil {
		fmt.Fprintln(os.Stderr, "volumehelper:", err)
		os.Exit(1)
	}
}

func run(path, mode, action string) error {
	clean := filepath.Clean(path)
	if !filepath.IsAbs(clean) || filepath.Dir(clean) == clean {
		return fmt.Errorf("refusing volume path %q: it must be an absolute path below /", path)
	}
	if mode != "Filesystem" {
		return fmt.Errorf("volume mode %q is not supported (only Filesystem)", mode)
	}
	switch action {
	case "create":
		if err := os.MkdirAll(clean, 0o777); err != nil {
			return err
		}
		// MkdirAll's mode is filtered by the umask; a volume must be writable by any pod user.
		return os.Chmod(clean, 0o777)
	case "delete":
		return os.RemoveAll(clean)
	default:
		return fmt.Errorf("unknown action %q (want create or delete)", action)
	}
}
