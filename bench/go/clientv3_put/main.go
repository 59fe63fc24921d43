// clientv3_put: a put load generator on Go's clientv3 (etcd 3.4's, as Kubernetes and most Go
// users drive etcd), to check that etcd-rs-bench's figures are not an artefact of its Rust
// client (issue 15 asked why a clientv3-based run and compare.sh disagreed on put).
//
// -conns clients, each given every endpoint (clientv3 balances its requests over them round
// robin, as etcd's tools/benchmark does), share -clients goroutines that each put one key at a
// time (random keys in -key-space, -val-size bytes) for -duration. Prints one JSON line:
// requests, seconds, throughput, latency_ms {p50, p90, p99, p999}, errors.
//
// Built in GOPATH mode against Debian's golang-etcd-server-dev (bench/clientv3_put.sh).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated endpoints")
	conns := flag.Int("conns", 16, "clientv3 clients (each balances over every endpoint)")
	clients := flag.Int("clients", 256, "concurrent putters")
	keySpace := flag.Int("key-space", 100000, "keys are drawn from this many")
	valSize := flag.Int("val-size", 256, "value bytes")
	duration := flag.Duration("duration", 20*time.Second, "how long to put")
	flag.Parse()

	eps := strings.Split(*endpoints, ",")
	cs := make([]*clientv3.Client, *conns)
	for i := range cs {
		c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintf(os.Stderr, "dial: %v\n", err)
			os.Exit(1)
		}
		defer c.Close()
		cs[i] = c
	}
	value := strings.Repeat("v", *valSize)
	deadline := time.Now().Add(*duration)
	lat := make([][]time.Duration, *clients)
	errs := make([]int, *clients)
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < *clients; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			c := cs[g%len(cs)]
			rng := rand.New(rand.NewSource(int64(g)))
			for time.Now().Before(deadline) {
				key := fmt.Sprintf("%08d", rng.Intn(*keySpace))
				t := time.Now()
				_, err := c.Put(context.Background(), key, value)
				if err != nil {
					errs[g]++
					continue
				}
				lat[g] = append(lat[g], time.Since(t))
			}
		}(g)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	var all []time.Duration
	nerr := 0
	for g := range lat {
		all = append(all, lat[g]...)
		nerr += errs[g]
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	out, _ := json.Marshal(map[string]interface{}{
		"requests":   len(all),
		"seconds":    secs,
		"throughput": float64(len(all)) / secs,
		"errors":     nerr,
		"latency_ms": map[string]float64{"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "p999": pct(0.999)},
	})
	fmt.Println(string(out))
}
