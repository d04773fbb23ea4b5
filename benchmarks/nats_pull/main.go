// nats_pull: what `nats bench --js --pull` does on the consumer side, for a ceiling of
// bench_brokers.py when the nats CLI is not installed: N connections pull from one
// durable consumer of a stream already filled, Fetch(batch) then Ack() each message
// (nats.go sends acks without waiting for an answer, as nats bench does), until all of
// them are read; prints one line, "<messages> <seconds>". Built with Debian's golang-go
// and golang-github-nats-io-go-nats-dev (GOPATH mode: GO111MODULE=off,
// GOPATH=/usr/share/gocode), or with modules where the Go module proxy is reachable.
//
//	go build -o nats_pull . && ./nats_pull -subject s -durable d -n 200000 -batch 5000 -c 1
package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	url := flag.String("url", nats.DefaultURL, "server")
	subject := flag.String("subject", "", "subject a stream captures")
	durable := flag.String("durable", "", "durable pull consumer (created with max_ack_pending -1)")
	n := flag.Int64("n", 0, "messages to read in all")
	batch := flag.Int("batch", 5000, "messages per Fetch")
	clients := flag.Int("c", 1, "connections pulling at once")
	flag.Parse()

	var got int64
	var wg sync.WaitGroup
	ready := make(chan struct{})
	conns := make([]*nats.Conn, *clients)
	subs := make([]*nats.Subscription, *clients)
	done := make([]time.Time, *clients) // when each one's last messages were acked
	for i := range subs {
		nc, err := nats.Connect(*url)
		check(err)
		defer nc.Close()
		js, err := nc.JetStream()
		check(err)
		conns[i] = nc
		subs[i], err = js.PullSubscribe(*subject, *durable, nats.MaxAckPending(-1))
		check(err)
	}
	var start time.Time
	for i := range subs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-ready
			for atomic.LoadInt64(&got) < *n {
				// a Fetch left waiting once the others took the last ones times out:
				// not counted (done is the time of the last batch it acked)
				msgs, err := subs[i].Fetch(*batch, nats.MaxWait(time.Second))
				if err == nats.ErrTimeout {
					continue
				}
				check(err)
				for _, m := range msgs {
					check(m.Ack())
				}
				done[i] = time.Now()
				atomic.AddInt64(&got, int64(len(msgs)))
			}
		}(i)
	}
	start = time.Now()
	close(ready)
	wg.Wait()
	for _, nc := range conns {
		check(nc.Flush()) // every ack reached the server (one round trip, not timed)
	}
	end := start
	for _, t := range done {
		if t.After(end) {
			end = t
		}
	}
	fmt.Printf("%d %.6f\n", got, end.Sub(start).Seconds())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats_pull:", err)
		os.Exit(1)
	}
}
