// Package deploy holds no code: it is the deployment files of a cellgate cluster (haproxy.cfg,
// cellgate.service, cellgate.env; see README.md), and its tests check them with the real tools.
package deploy
