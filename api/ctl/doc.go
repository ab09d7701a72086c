// Package ctl is `drover ctl`: the common operator tasks of the control
// plane from a shell — add, import, export, list and suspend devices,
// rotate a device's token, issue a live-client token — talking to
// `drover api` over its REST API, never to its database.
//
// The API's URL comes from -api or $DROVER_CTL_API; the key never from the
// command line (a command line is visible to every user of the host): from
// $DROVER_API_KEY, or from the file named by -key-file or
// $DROVER_CTL_KEY_FILE (the bootstrap admin key file of `drover api`
// works as it is).
package ctl
