package worker

import "github.com/felhom/felhom-agent/internal/temporalclient"

// clientConfig is cfg as package temporalclient takes it.
func clientConfig(cfg TemporalConfig) temporalclient.Config {
	return temporalclient.Config{
		Address:    cfg.Address,
		Namespace:  cfg.Namespace,
		APIKeyFile: cfg.APIKeyFile,
		APIKey:     cfg.APIKey,
		TLS: temporalclient.TLS{
			CAFile:     cfg.TLS.CAFile,
			CertFile:   cfg.TLS.CertFile,
			KeyFile:    cfg.TLS.KeyFile,
			ServerName: cfg.TLS.ServerName,
		},
	}
}
