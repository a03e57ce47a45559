// Command worker is the serving process: with --role context or generation
// it is one half of a disaggregated deployment, without a role it serves
// both phases, and `worker probe` prints what this machine can do.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"disagg/worker"
	"disagg/worker/config"
	"disagg/worker/probe"
)

func main() { os.Exit(run(os.Args)) }

func run(args []string) int {
	app := newApp()
	if err := app.Run(args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			fmt.Fprintln(os.Stderr, "worker:", err)
			return ec.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	return 0
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "worker",
		Usage: "serve an LLM through the OpenAI API, as a context, generation or aggregated worker",
		Description: "One process per GPU (chosen by CUDA_VISIBLE_DEVICES). Without --model it serves the\n" +
			"embedded tiny model on the CPU, so every command works on any machine.\n\n" +
			"Environment:\n" + envHelp(),
		HideHelpCommand: true,
		Flags:           serveFlags(),
		Action:          serve,
		Commands: []*cli.Command{
			{
				Name:   "probe",
				Usage:  "print this machine's capabilities (CPU, GPUs, native libraries) as JSON",
				Action: func(c *cli.Context) error { return probe.Print(c.Context, os.Stdout) },
			},
			disaggregatedCommand(),
		},
	}
}

func envHelp() string {
	var b strings.Builder
	for _, e := range config.EnvVars {
		fmt.Fprintf(&b, "   %-28s %s\n", e.Name, e.Description)
	}
	return b.String()
}

func serveFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "Hugging Face checkpoint folder (default: the config's `model`, else the embedded tiny model)"},
		&cli.StringFlag{Name: "config", Aliases: []string{"c", "extra_llm_api_options"}, Usage: "YAML options file (trtllm-serve's extra LLM API options keys)"},
		&cli.StringFlag{Name: "role", Aliases: []string{"server_role"}, Usage: "context | generation (empty: both phases)"},
		&cli.StringFlag{Name: "host", Usage: "address to listen on (default 0.0.0.0)"},
		&cli.IntFlag{Name: "port", Usage: "port to listen on; 0 picks a free one (default 8000)"},
		&cli.StringFlag{Name: "served-model-name", Aliases: []string{"served_model_name"}, Usage: "model name clients send (default: the folder's name)"},
		&cli.IntFlag{Name: "max_batch_size", Aliases: []string{"max-batch-size"}, Usage: "most sequences per step"},
		&cli.IntFlag{Name: "max_num_tokens", Aliases: []string{"max-num-tokens"}, Usage: "most tokens per step"},
		&cli.IntFlag{Name: "max_seq_len", Aliases: []string{"max-seq-len", "max-model-len"}, Usage: "most tokens per sequence (default: the model's context)"},
		&cli.StringFlag{Name: "compute-backend", Usage: "auto | cpu | cuda"},
		&cli.StringFlag{Name: "dtype", Usage: "auto | bfloat16 | float32: the CUDA backend's number format (float32: exact but slow)"},
		&cli.IntFlag{Name: "threads", Usage: "CPU backend threads (default: one per core)"},
		&cli.StringFlag{Name: "disagg_cluster_uri", Aliases: []string{"disagg-cluster-uri"}, Usage: "register with the proxy at http://host:port (disagg_cluster.cluster_uri; needs --role)"},
		&cli.StringFlag{Name: "api-key", EnvVars: []string{"WORKER_API_KEY"}, Usage: "require `Authorization: Bearer <key>` on /v1/*"},
		&cli.StringFlag{Name: "log-level", Aliases: []string{"log_level"}, EnvVars: []string{"WORKER_LOG_LEVEL"}, Usage: "debug | info | warn | error"},
	}
}

// resolve builds the configuration: defaults, then the file, then flags.
func resolve(c *cli.Context) (config.Config, []string, error) {
	cfg := config.Default()
	var warnings []string
	if f := c.String("config"); f != "" {
		w, err := config.LoadFile(f, &cfg)
		if err != nil {
			return cfg, nil, err
		}
		warnings = w
	}
	str := func(name string, dst *string) {
		if c.IsSet(name) {
			*dst = c.String(name)
		}
	}
	num := func(name string, dst *int) {
		if c.IsSet(name) {
			*dst = c.Int(name)
		}
	}
	str("model", &cfg.Model)
	str("role", &cfg.Role)
	str("host", &cfg.Host)
	num("port", &cfg.Port)
	str("served-model-name", &cfg.ServedModelName)
	num("max_batch_size", &cfg.MaxBatchSize)
	num("max_num_tokens", &cfg.MaxNumTokens)
	num("max_seq_len", &cfg.MaxSeqLen)
	str("compute-backend", &cfg.ComputeBackend)
	str("dtype", &cfg.DType)
	num("threads", &cfg.Threads)
	str("disagg_cluster_uri", &cfg.DisaggCluster.ClusterURI)
	str("api-key", &cfg.APIKey)
	str("log-level", &cfg.LogLevel)
	return cfg, warnings, cfg.Validate()
}

func serve(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("unexpected argument %q (commands: probe, disaggregated; see --help)", c.Args().First()), 2)
	}
	cfg, warnings, err := resolve(c)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	log := newLogger(cfg.LogLevel)
	for _, w := range warnings {
		log.Warn("config", "warning", w)
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return worker.Serve(ctx, cfg, log)
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
