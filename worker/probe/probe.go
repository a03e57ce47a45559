// Package probe reports what this machine can do: CPU, memory, GPUs and
// the native libraries the worker may load. `worker probe` prints it as
// JSON; a server learns it by running that command as a short-lived
// subprocess (Run), so that a broken driver or library cannot take the
// server down.
package probe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"disagg/cuda"
	"disagg/internal/dl"
	"disagg/transceiver/ucx"
)

// Report is the probe's JSON document.
type Report struct {
	CPU       CPU                `json:"cpu"`
	Memory    Memory             `json:"memory"`
	GPUs      GPUs               `json:"gpus"`
	Libraries map[string]Library `json:"libraries"`
	// UCX is what the UCX transceiver's library can do (DISAGG_UCX_LIB or
	// libucp.so.0): version and the memory types it registers.
	UCX    *ucx.Capabilities `json:"ucx_transceiver,omitempty"`
	UCXErr string            `json:"ucx_transceiver_error,omitempty"`
	Build  Build             `json:"build"`
}

// CPU describes the processor.
type CPU struct {
	Model    string   `json:"model"`
	Arch     string   `json:"arch"`
	Cores    int      `json:"cores"`
	Features []string `json:"features"`
}

// Memory is host memory in bytes.
type Memory struct {
	TotalBytes     int64 `json:"total_bytes"`
	AvailableBytes int64 `json:"available_bytes"`
}

// GPUs describes the NVIDIA driver and its devices (through NVML). The
// devices are all of the machine's; CUDA_VISIBLE_DEVICES says which one a
// worker uses.
type GPUs struct {
	Driver            Library `json:"driver"`
	DriverVersion     string  `json:"driver_version,omitempty"`
	CUDADriverVersion string  `json:"cuda_driver_version,omitempty"`
	Devices           []GPU   `json:"devices"`
	VisibleDevice     string  `json:"cuda_visible_devices,omitempty"`
	Error             string  `json:"error,omitempty"`
}

// Library is one native library's load result.
type Library struct {
	Name    string `json:"name"`
	Found   bool   `json:"found"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
	Install string `json:"install,omitempty"`
}

// Build describes this binary.
type Build struct {
	Go   string `json:"go"`
	Cgo  bool   `json:"cgo"`
	CUDA bool   `json:"cuda"`
}

// Collect gathers the report in this process.
func Collect(ctx context.Context) Report {
	r := Report{
		CPU:       cpuInfo(),
		Memory:    memInfo(),
		Libraries: map[string]Library{},
		Build:     Build{Go: runtime.Version(), Cgo: cgoEnabled, CUDA: cuda.Built},
	}
	r.GPUs.Driver = tryLoad("libnvidia-ml.so.1", "", "the NVIDIA driver (GPU machines only)")
	r.GPUs.VisibleDevice = os.Getenv("CUDA_VISIBLE_DEVICES")
	r.GPUs.Devices = []GPU{}
	if r.GPUs.Driver.Found {
		devs, driver, cudaVersion, err := nvmlDevices()
		r.GPUs.Devices = append(r.GPUs.Devices, devs...)
		r.GPUs.DriverVersion, r.GPUs.CUDADriverVersion = driver, cudaVersion
		if err != nil {
			r.GPUs.Error = err.Error()
		}
	}
	if caps, err := ucx.Probe(os.Getenv("DISAGG_UCX_LIB")); err != nil {
		r.UCXErr = err.Error()
	} else {
		r.UCX = &caps
	}
	r.Libraries["ucx"] = tryLoad("libucp.so.0", "ucp_get_version_string", "apt-get install libucx-dev (or the libucx-cu13 wheel for GPU memory)")
	nixl := "libnixl_capi.so"
	if d := os.Getenv("NIXL_LIB_DIR"); d != "" {
		nixl = filepath.Join(d, nixl)
	}
	r.Libraries["nixl"] = tryLoad(nixl, "", "pip install nixl-cu13 into the project virtualenv (make venv), or set NIXL_LIB_DIR")
	r.Libraries["cudart"] = tryLoad("libcudart.so.13", "", "the CUDA 13 runtime (system CUDA or the nvidia-cuda-runtime wheel)")
	return r
}

func tryLoad(name, versionSym, install string) Library {
	lib := Library{Name: name}
	l, err := dl.Open(name)
	if err != nil {
		lib.Error = err.Error()
		lib.Install = install
		return lib
	}
	defer func() { _ = l.Close() }()
	lib.Found = true
	if versionSym != "" {
		if p, err := l.Sym(versionSym); err == nil {
			lib.Version = dl.CString(p)
		}
	}
	return lib
}

// Print writes the report as indented JSON.
func Print(ctx context.Context, w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(Collect(ctx))
}

// Run executes `exe probe` with a timeout and parses its output, so that a
// crash in a native library ends only the subprocess.
func Run(ctx context.Context, exe string, timeout time.Duration) (Report, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, exe, "probe")
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return Report{}, fmt.Errorf("probe: %s probe: %w (stderr: %s)", exe, err, strings.TrimSpace(errb.String()))
	}
	var r Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return Report{}, fmt.Errorf("probe: bad JSON from %s probe: %w", exe, err)
	}
	return r, nil
}

func cpuInfo() CPU {
	c := CPU{Arch: runtime.GOARCH, Cores: runtime.NumCPU()}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return c
	}
	defer f.Close()
	want := map[string]bool{"avx2": true, "avx512f": true, "fma": true, "f16c": true, "avx512_bf16": true, "amx_bf16": true, "asimd": true}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "model name":
			if c.Model == "" {
				c.Model = v
			}
		case "flags", "Features":
			if c.Features == nil {
				c.Features = []string{}
				for _, fl := range strings.Fields(v) {
					if want[fl] {
						c.Features = append(c.Features, fl)
					}
				}
			}
		}
	}
	return c
}

func memInfo() Memory {
	var m Memory
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return m
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		var key string
		var kb int64
		if _, err := fmt.Sscanf(s.Text(), "%s %d", &key, &kb); err != nil {
			continue
		}
		switch key {
		case "MemTotal:":
			m.TotalBytes = kb << 10
		case "MemAvailable:":
			m.AvailableBytes = kb << 10
		}
	}
	return m
}
