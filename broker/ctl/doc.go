// Package ctl is ivshimctl without its main: it parses the command line, asks the broker over
// its API socket and prints the answer as a table, or as JSON with -json.
package ctl
