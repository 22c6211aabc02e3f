// Package deploy is the deployment files of a cellgate cluster (haproxy.cfg, cellgate.service,
// cellgate.env; see README.md); its tests check them with the real tools. HAProxyConfig hands
// the shipped haproxy.cfg to package localcluster, which runs it on one machine.
package deploy

import _ "embed"

//go:embed haproxy.cfg
var haproxyConfig string

// HAProxyConfig is haproxy.cfg as shipped.
func HAProxyConfig() string { return haproxyConfig }
