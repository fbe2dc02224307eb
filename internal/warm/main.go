// Command warm imports every module the project is built from, so that the
// module graph stays complete while packages that use them are being written
// and `go build ./...` warms the build cache for all of them in one step.
package main

import (
	_ "github.com/luthermonson/go-proxmox"
	_ "github.com/rogpeppe/go-internal/testscript"
	_ "github.com/temporalio/ui-server/v2/server"
	_ "github.com/uber-go/tally/v4/prometheus"
	_ "go.temporal.io/sdk/client"
	_ "go.temporal.io/sdk/testsuite"
	_ "go.temporal.io/sdk/worker"
	_ "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	_ "go.temporal.io/server/temporal"
	_ "golang.org/x/crypto/ssh"
	_ "golang.org/x/crypto/ssh/agent"
	_ "gopkg.in/yaml.v3"
)

func main() {}
