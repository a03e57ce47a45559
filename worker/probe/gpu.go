package probe

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPU is one device as the driver (NVML) sees it.
type GPU struct {
	Index             int    `json:"index"`
	Name              string `json:"name"`
	UUID              string `json:"uuid,omitempty"`
	ComputeCapability string `json:"compute_capability"`
	MemoryTotalBytes  uint64 `json:"memory_total_bytes"`
	MemoryFreeBytes   uint64 `json:"memory_free_bytes"`
}

// nvmlDevices lists the GPUs through NVML (dlopen'ed by go-nvml, so a
// machine without the driver gets an error, not a crash), with the driver
// and CUDA driver versions.
func nvmlDevices() (devs []GPU, driver, cudaVersion string, err error) {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		return nil, "", "", fmt.Errorf("nvml: init: %w", ret)
	}
	defer func() {
		if ret := nvml.Shutdown(); ret != nvml.SUCCESS && err == nil {
			err = fmt.Errorf("nvml: shutdown: %w", ret)
		}
	}()
	if v, ret := nvml.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		driver = v
	}
	if v, ret := nvml.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		cudaVersion = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	n, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, driver, cudaVersion, fmt.Errorf("nvml: device count: %w", ret)
	}
	var errs []error
	for i := 0; i < n; i++ {
		d, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("nvml: device %d: %w", i, ret))
			continue
		}
		g := GPU{Index: i}
		if g.Name, ret = d.GetName(); ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("nvml: device %d name: %w", i, ret))
		}
		g.UUID, _ = d.GetUUID() // optional
		if major, minor, ret := d.GetCudaComputeCapability(); ret == nvml.SUCCESS {
			g.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
		}
		if m, ret := d.GetMemoryInfo(); ret == nvml.SUCCESS {
			g.MemoryTotalBytes, g.MemoryFreeBytes = m.Total, m.Free
		}
		devs = append(devs, g)
	}
	return devs, driver, cudaVersion, errors.Join(errs...)
}
