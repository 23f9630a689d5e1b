package main

import (
	"fmt"
	"os"
	"time"

	"github.com/prometheus/procfs"
)

// cpuSample is the CPU time used so far, in seconds, by the machine (busy
// and idle), by the PostgreSQL server's processes, and by this process.
type cpuSample struct {
	at               time.Time
	busy, idle       float64
	postgres, bench  float64
	postgresReadable bool
}

// userHZ is the unit of /proc's per-process times, as procfs assumes.
const userHZ = 100

// sampleCPU reads /proc. The server's processes are found by name, so the
// figure is the local server's; postgresReadable is false when none is
// found (a server on another machine).
func sampleCPU() (cpuSample, error) {
	s := cpuSample{at: time.Now()}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return s, err
	}
	st, err := fs.Stat()
	if err != nil {
		return s, err
	}
	c := st.CPUTotal
	s.idle = c.Idle + c.Iowait
	s.busy = c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal
	procs, err := fs.AllProcs()
	if err != nil {
		return s, err
	}
	self := os.Getpid()
	for _, p := range procs {
		ps, err := p.Stat()
		if err != nil {
			continue // gone meanwhile
		}
		switch {
		case p.PID == self:
			s.bench = ps.CPUTime()
		case ps.Comm == "postgres":
			// The postmaster's children's times count the backends that
			// have exited.
			s.postgres += ps.CPUTime() + float64(ps.CUTime+ps.CSTime)/userHZ
			s.postgresReadable = true
		}
	}
	return s, nil
}

// cpuSplit says how the machine's cores were used between two samples.
func cpuSplit(from, to cpuSample) string {
	wall := to.at.Sub(from.at).Seconds()
	if wall <= 0 {
		return "CPU not measured"
	}
	cores := (to.busy + to.idle - from.busy - from.idle) / wall
	pg := "PostgreSQL not measured (not on this machine)"
	if from.postgresReadable && to.postgresReadable {
		pg = fmt.Sprintf("PostgreSQL %.2f", (to.postgres-from.postgres)/wall)
	}
	return fmt.Sprintf("CPU cores: %s, the bench process %.2f, idle %.2f of %.0f", pg, (to.bench-from.bench)/wall, (to.idle-from.idle)/wall, cores)
}

// measureCPU runs f and says how the machine's cores were used meanwhile.
func measureCPU(f func()) (string, error) {
	from, err := sampleCPU()
	if err != nil {
		return "", err
	}
	f()
	to, err := sampleCPU()
	if err != nil {
		return "", err
	}
	return cpuSplit(from, to), nil
}
