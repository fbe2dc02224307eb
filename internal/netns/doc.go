// Package netns makes Linux network namespaces joined by veth links, so
// that a test can run one host's processes on a network of their own and
// cut that network (Link.Cut) and heal it (Link.Heal) at an exact point.
//
// Everything is made with iproute2's `ip` command and needs root
// (CAP_SYS_ADMIN and CAP_NET_ADMIN); Available says whether this machine
// can. Names carry the creating process's id and a random suffix, so runs
// in parallel on one machine never meet, and New first deletes the
// namespaces of runs whose process is gone, and the routes of cuts whose
// link is gone (a killed test cannot clean up after itself). Each link gets a random /30 of 10.0.0.0/8 that no route
// of the root namespace covers.
//
// A program enters a namespace with Command (`ip netns exec`), and code of
// this process with Do: a listener opened inside Do stays in the namespace
// after Do returns, so an in-process server can listen there while the
// rest of the process (and its other servers) stays in the root namespace.
package netns
