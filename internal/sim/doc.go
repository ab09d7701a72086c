// Package sim simulates a fleet of drover devices: trackers that take readings, keep them in an
// outbox, send them to frontends over WebSocket and forget them only once a frontend has acked
// them. It drives `drover sim`, the end-to-end and crash tests, and load runs.
//
// # What a simulated device does
//
// Each device behaves like a store-and-forward tracker (see docs/wire-format.md for the wire):
//
//   - It takes readings at Config.Rate per second, whether connected or not, into a bounded
//     outbox (Config.Outbox readings, by default one hour's worth). A reading that finds the outbox
//     full is dropped before it gets a seq, and counted (Stats.OutboxDrops): that is the device's
//     loss, not the server's, and it keeps a device's seqs contiguous: 1, 2, 3, ... (or from
//     Config.FirstSeq).
//   - It sends outbox readings in frames of up to Config.FrameReadings with at most Config.Window
//     frames un-acked, and removes readings from the outbox only when an ack covers them.
//   - After any disconnect (close code, network error, downlink error, ack timeout) it reconnects
//     with exponential backoff and full jitter (each wait uniform in [0, d]), to a frontend picked
//     at random (another one than the one that just failed, when there are several), and resends
//     every un-acked reading, oldest first. HTTP 401 waits Config.BackoffMax; a 503 or 429 with a
//     Retry-After waits exactly that plus up to a second of jitter (the server chose it to spread
//     the herd) and goes back to the same frontend, which holds its place in line (once: refused
//     there again, it picks another); a 503's place more than 5 s away, with other
//     frontends known, sends it to ask one other frontend at once, keeping the place, and back to
//     whichever place comes first if told to wait there too; a close 1012 (a frontend's lame duck) or 1001 reconnects at once, within a
//     second, to another frontend. This is the device side's contract of docs/ingest.md.
//   - Over wss:// (Config.TLSCAFile) each device keeps the TLS session of its last connection and
//     resumes it at the next (Config.TLSNoResume: never), and may authenticate with a client
//     certificate its fleet's CA issues it (Config.TLSDeviceCACert). Stats counts full and
//     resumed handshakes.
//
// Each device runs two goroutines while connected: a writer (which also takes readings and
// handles reconnects) and a reader of acks. The writer wakes at the device's rate (at most every
// 5 ms) only while its window has room; while the window is full it waits for the ack that
// opens it (a 100 ms tick keeps the counts current), and the reader, before an ack frees
// outbox room, takes the readings that fell due meanwhile, so that a full outbox drops them as
// it would have on time. An ack wakes the writer only when it gives it work (a full window,
// readings not yet sent, an outbox whose emptying may end the device), and the ack timeout is
// checked on the writer's own wakes when they come at least every AckTimeout/4: a steady
// device's goroutines wake twice per frame (its reading tick, its ack), not three or four times. Binary frames are written straight from the outbox with protowire (the
// bytes protobuf-go writes; frame.go), JSON ones through protobuf-go; several frames ready at
// once (a window opened by more than one) go to the socket in one write. A steady device
// allocates little per frame and makes about one write(2) per ack.
//
// # What a simulated vehicle does
//
// Each device rides in a vehicle of its class (truck, bus, car, round-robin by index) that drives
// a real Southern African corridor (routes.go: N1, N3, N4 Maputo Corridor, Trans-Kalahari,
// Gaborone–Johannesburg, Beitbridge–Harare, Harare–Lusaka, Lusaka–Lilongwe) back and forth along
// great circles between its waypoints, or, for some buses and cars, a loop in one of the cities.
// It accelerates and brakes within its class's profile, stops (traffic with the engine idling;
// rest, fuel and end-of-route stops with the ignition off, refuelling), and has occasional harsh
// brakings, speedings and overheatings, marked in the readings' extra map (ExtraHarshBraking,
// ExtraSpeeding, ExtraOverheating). A vehicle's journey depends only on Config.Seed and its index.
// Config.StampedeEvery (or Fleet.Stampede) drops every connection at once: a reconnect storm.
// See docs/simulator.md.
//
// # Measurements
//
// Ack latency is measured per reading from the moment its frame is first handed to the socket
// (written, not generated: time spent waiting in the outbox for a window is not the server's;
// taken as the frame is encoded, a few µs before the write of the frames sent with it) to
// the moment the reader receives the ack that covers it. A reading resent after a reconnect keeps
// its first send time, so a dropped ack shows up in the tail. Latencies go into a log-bucketed
// histogram (16 buckets per power of two: percentiles are reported as their bucket's upper
// bound, at most 6.25% high, and never above the exact maximum).
//
// Fleet.Acked gives each device's highest acked seq: since seqs are contiguous, every
// (device, FirstSeq ≤ seq ≤ acked) must be in storage, which is what the end-to-end tests check. Stats.Acked
// counts each seq once, however often it was resent.
//
// # Commands
//
// Each device plays the device's side of commands (commands.go; docs/wire-format.md): it
// dedups by command id (a command delivered again gets its stored report, never a second
// execution), refuses one that arrives expired, reports received and then its result after
// Config.CommandDelay (failed with Config.CommandFailureRate), and keeps final reports until a
// report_ack, sending them again on every connection. Summary.Commands counts it all, with the
// call → receipt latency of commands that carry BenchSentParam.
//
// # Use
//
//	cfg := sim.DefaultConfig()
//	cfg.URLs = []string{"ws://127.0.0.1:8080"}
//	cfg.Devices, cfg.Rate, cfg.TokenSeed = 1000, 1, "secret"
//	_ = sim.WriteRegistry("devices.json", cfg) // for the frontend
//	f, err := sim.New(cfg, logger, reg) // or sim.Start(ctx, cfg, logger): New, then Run in the background
//	go f.Progress(os.Stderr, 5*time.Second)
//	err = f.Run(ctx)                     // until Readings are acked, Duration (+ Drain) or ctx ends
//	json.NewEncoder(os.Stdout).Encode(f.Summary())
//	acked := f.Acked()                   // device → highest acked seq, for storage checks
//
// One process holding both ends of many loopback connections meets the open-file limit: run the
// simulator in its own processes, each with its own Config.DeviceOffset (scripts/sim-fleet.sh),
// and past ~28k connections per source address give Config.LocalAddrs (with Linux's
// IP_BIND_ADDRESS_NO_PORT, which the simulator sets, that is ~28k per source and frontend address).
package sim
