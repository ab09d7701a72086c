package daemon

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// EnvName returns the environment variable that [BindEnv] reads for the flag
// called name under prefix: the prefix and the flag name joined by "_", in
// upper case, with "-" and "." turned into "_". For example EnvName("DROVER_FRONTEND",
// "queue-dir") is "DROVER_FRONTEND_QUEUE_DIR".
func EnvName(prefix, name string) string {
	name = strings.NewReplacer("-", "_", ".", "_").Replace(name)
	if prefix == "" {
		return strings.ToUpper(name)
	}
	return strings.ToUpper(prefix + "_" + name)
}

// BindEnv gives every flag already defined in fs an environment fallback.
// Call it after all flags are defined and before fs.Parse: for each flag whose
// variable (see [EnvName]) is set, it sets the flag from that value, and it
// appends " [$VAR]" to every flag's usage so that -h documents the variable.
// Since fs.Parse runs afterwards, a flag given on the command line wins over
// the environment, which wins over the default.
//
// A value that the flag cannot parse is an error that names the variable;
// every such variable is reported, not only the first. A secret flag (see
// [SecretVar]) is set the same way, and its usage says how to give it.
func BindEnv(fs *flag.FlagSet, prefix string) error {
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		env := EnvName(prefix, f.Name)
		if handled, err := bindSecret(fs, f, env); handled {
			if err != nil {
				errs = append(errs, fmt.Sprintf("environment variable %s: %v", env, err))
			}
			return // its value is never echoed, nor its variable in [$VAR] again
		}
		f.Usage += " [$" + env + "]"
		v, ok := os.LookupEnv(env)
		if !ok {
			return
		}
		// fs.Set (not f.Value.Set) so that fs.Visit reports the flag as set:
		// a value from the environment is as deliberate as one on the command line.
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Sprintf("environment variable %s=%q: %v", env, v, err))
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// StringList is a [flag.Value] holding a comma-separated list, such as
// "tcp://a:5555,tcp://b:5555". Items are trimmed of spaces and empty items are
// dropped. Each Set replaces the whole list, so that a flag given on the
// command line replaces a value taken from the environment or the default
// rather than adding to it.
type StringList []string

// String returns the list joined by commas.
func (l *StringList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

// Set replaces the list with the comma-separated items of s.
func (l *StringList) Set(s string) error {
	items := []string{}
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	*l = items
	return nil
}

// Get returns the list as a []string, for [flag.Getter].
func (l *StringList) Get() any { return []string(*l) }
