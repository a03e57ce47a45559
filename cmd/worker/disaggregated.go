package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"disagg/proxy"
)

// disaggregatedCommand is `worker disaggregated -c disagg_config.yaml [-m
// metadata_config.yaml]`: the proxy in front of context and generation
// workers, with trtllm-serve disaggregated's flags.
func disaggregatedCommand() *cli.Command {
	return &cli.Command{
		Name:  "disaggregated",
		Usage: "run the OpenAI proxy in front of context and generation workers",
		Description: "Reads disagg_config.yaml (trtllm-serve's keys: hostname, port, model, context_servers,\n" +
			"generation_servers with num_instances, urls and router, max_retries, disagg_cluster ...).\n" +
			"Each request is prefilled on a context server and decoded on a generation server; without\n" +
			"context_servers the generation servers are aggregated workers (no --role) that get each request whole.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config_file", Aliases: []string{"c", "config"}, Required: true, Usage: "disagg_config.yaml"},
			&cli.StringFlag{Name: "metadata_server_config_file", Aliases: []string{"m"}, Usage: "metadata_config.yaml (etcd metadata server; parsed, discovery not implemented yet)"},
			&cli.IntFlag{Name: "server_start_timeout", Aliases: []string{"t"}, Usage: "seconds to wait for the servers at start (default 180)"},
			&cli.IntFlag{Name: "request_timeout", Aliases: []string{"r"}, Usage: "seconds each upstream call may take (default 180)"},
			&cli.StringFlag{Name: "log_level", Aliases: []string{"l", "log-level"}, EnvVars: []string{"WORKER_LOG_LEVEL"}, Usage: "debug | info | warn | error"},
			&cli.StringFlag{Name: "api-key", EnvVars: []string{"DISAGG_API_KEY"}, Usage: "require `Authorization: Bearer <key>` from clients, and send it to the workers"},
			&cli.StringFlag{Name: "host", Usage: "address to listen on (overrides hostname)"},
			&cli.IntFlag{Name: "port", Usage: "port to listen on (overrides port)"},
		},
		Action: runDisaggregated,
	}
}

func runDisaggregated(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("unexpected argument %q (see --help)", c.Args().First()), 2)
	}
	cfg := proxy.Default()
	warnings, err := proxy.LoadFile(c.String("config_file"), &cfg)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	if c.IsSet("server_start_timeout") {
		cfg.ServerStartTimeout = c.Int("server_start_timeout")
	}
	if c.IsSet("request_timeout") {
		cfg.RequestTimeout = c.Int("request_timeout")
	}
	if c.IsSet("log_level") {
		cfg.LogLevel = c.String("log_level")
	}
	if c.IsSet("api-key") {
		cfg.APIKey = c.String("api-key")
	}
	if c.IsSet("host") {
		cfg.Hostname = c.String("host")
	}
	if c.IsSet("port") {
		cfg.Port = c.Int("port")
	}
	if err := cfg.Validate(); err != nil {
		return cli.Exit(err.Error(), 2)
	}
	var meta *proxy.MetadataConfig
	if f := c.String("metadata_server_config_file"); f != "" {
		m := proxy.DefaultMetadata()
		if err := proxy.LoadMetadataFile(f, &m); err != nil {
			return cli.Exit(err.Error(), 2)
		}
		meta = &m
	}
	log := newLogger(cfg.LogLevel)
	for _, w := range warnings {
		log.Warn("config", "warning", w)
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return proxy.Run(ctx, cfg, meta, log, nil)
}
