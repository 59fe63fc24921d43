// watch_resume: a Go clientv3 watcher for etcd-rs's integration tests (server/tests/graceful_stop.rs).
//
// It watches one key through a client given every endpoint of a cluster and prints one line per
// thing it sees, for the test to read:
//
//	created                 the watch is registered on a member
//	event PUT <key> <value> <mod_revision>
//	error <err>             a response carrying an error (the watch goes on)
//	canceled <err>          the watch was canceled: the client gave up on it (exit 1)
//	closed                  the watch channel closed (exit 1)
//	done                    -events events arrived (exit 0)
//	timeout                 -timeout passed first (exit 1)
//
// clientv3 resumes a watch by itself after a stream error it counts as transient (gRPC
// Unavailable), from the revision after the last one it delivered; it cancels the watch for good
// on anything else, including a clean end of stream. So a test that stops a member under this
// program learns from "canceled"/"closed" whether the member ended its streams as etcd does.
//
// Built in GOPATH mode against Debian's golang-etcd-server-dev (clientv3 3.4), see the test.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated client URLs")
	key := flag.String("key", "", "the key to watch")
	want := flag.Int("events", 1, "exit 0 after this many events")
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(1)
	}
	defer cli.Close()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	seen := 0
	for resp := range cli.Watch(ctx, *key, clientv3.WithCreatedNotify()) {
		if resp.Created {
			fmt.Println("created")
		}
		if resp.Canceled {
			fmt.Printf("canceled %v\n", resp.Err())
			os.Exit(1)
		}
		if err := resp.Err(); err != nil {
			fmt.Printf("error %v\n", err)
		}
		for _, ev := range resp.Events {
			fmt.Printf("event %s %s %s %d\n", ev.Type, ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision)
			seen++
			if seen == *want {
				fmt.Println("done")
				return
			}
		}
	}
	if ctx.Err() != nil {
		fmt.Println("timeout")
	} else {
		fmt.Println("closed")
	}
	os.Exit(1)
}
