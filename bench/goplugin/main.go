// The go-plugin peer of the isolation benchmark: hashicorp go-plugin (net/rpc), a plugin
// whose one call takes a 1 KiB argument. One binary plays both roles: started with the
// handshake cookie in its environment it serves as the plugin; otherwise it is the host,
// which starts itself as the plugin and prints, in seconds, the median plugin start and
// the time per call: "START PER_CALL".
package main

import (
	"fmt"
	"net/rpc"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "HOST_BENCH_GO_PLUGIN",
	MagicCookieValue: "upload",
}

// Backend is what the plugin offers: an upload of a script.
type Backend interface {
	Upload(script []byte) int
}

type backendRPC struct{ client *rpc.Client }

func (b *backendRPC) Upload(script []byte) int {
	var n int
	if err := b.client.Call("Plugin.Upload", script, &n); err != nil {
		panic(err)
	}
	return n
}

type backendRPCServer struct{ impl Backend }

func (s *backendRPCServer) Upload(script []byte, n *int) error {
	*n = s.impl.Upload(script)
	return nil
}

type backendPlugin struct{ impl Backend }

func (p *backendPlugin) Server(*plugin.MuxBroker) (interface{}, error) {
	return &backendRPCServer{impl: p.impl}, nil
}

func (backendPlugin) Client(_ *plugin.MuxBroker, c *rpc.Client) (interface{}, error) {
	return &backendRPC{client: c}, nil
}

type fake struct{}

func (fake) Upload(script []byte) int { return len(script) }

func start() (*plugin.Client, Backend) {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: handshake,
		Plugins:         map[string]plugin.Plugin{"backend": &backendPlugin{}},
		Cmd:             exec.Command(os.Args[0]),
		Logger:          hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr}),
	})
	rpcClient, err := client.Client()
	if err != nil {
		panic(err)
	}
	raw, err := rpcClient.Dispense("backend")
	if err != nil {
		panic(err)
	}
	return client, raw.(Backend)
}

func main() {
	if os.Getenv(handshake.MagicCookieKey) == handshake.MagicCookieValue {
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: handshake,
			Plugins:         map[string]plugin.Plugin{"backend": &backendPlugin{impl: fake{}}},
		})
		return
	}
	calls, _ := strconv.Atoi(os.Args[1])
	runs, _ := strconv.Atoi(os.Args[2])
	var starts []float64
	for i := 0; i < runs; i++ {
		t := time.Now()
		client, backend := start()
		backend.Upload([]byte("x"))
		starts = append(starts, time.Since(t).Seconds())
		client.Kill()
	}
	sort.Float64s(starts)
	client, backend := start()
	defer client.Kill()
	script := make([]byte, 1024)
	backend.Upload(script)
	t := time.Now()
	for i := 0; i < calls; i++ {
		backend.Upload(script)
	}
	perCall := time.Since(t).Seconds() / float64(calls)
	fmt.Printf("%g %g\n", starts[len(starts)/2], perCall)
}
