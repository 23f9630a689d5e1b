package sightline

import (
	"runtime/debug"
	"sync"
)

// Version is sightline's version as the binary was built: the module's
// version, "(devel)" for a build from a checkout, with the commit when
// the build recorded it.
var Version = sync.OnceValue(func() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
})
