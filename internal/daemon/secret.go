package daemon

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// SecretVar defines two flags for a secret (a token, a password, a key)
// bound to dst: -name, which takes the secret only from its environment
// variable (see [BindEnv]), and -name-file, the path of a file holding it
// (a Kubernetes Secret mounted as a file; surrounding white space, such as
// the final newline, is trimmed).
//
// A secret on the command line is readable by every user of the host (ps,
// /proc/PID/cmdline) and by anyone who can fetch /debug/pprof/cmdline, and
// it lands in shell histories: -name given on the command line is refused
// by [CheckSecrets], with a message naming the two ways that are taken. The
// value is never printed: not as a default in -h, not in that message.
func SecretVar(fs *flag.FlagSet, dst *string, name, usage string) {
	s := &secret{dst: dst, name: name}
	fs.Var(&secretValue{s}, name, usage)
	fs.Var(&secretFile{s}, name+"-file", "`file` holding the "+name+" secret (the file's content, trimmed of surrounding white space)")
}

// secret is the state shared by the two flags of one secret.
type secret struct {
	dst     *string
	name    string // the -name flag's name, as BindEnv saw it
	env     string // its environment variable, once BindEnv bound it
	fromEnv bool   // BindEnv is setting the value
	envSet  bool   // the value came from the environment
	file    string // the value came from this file
	argSet  bool   // -name was given on the command line: refused
}

// secretValue is the -name flag: the environment's way in.
type secretValue struct{ s *secret }

// String never shows the secret: -h prints no default.
func (v *secretValue) String() string { return "" }

// Set takes the value from BindEnv; from the command line it only notes
// the attempt, refused by CheckSecrets after parsing (an error here would
// make the flag package print the value).
func (v *secretValue) Set(val string) error {
	if !v.s.fromEnv {
		v.s.argSet = true
		return nil
	}
	*v.s.dst = val
	v.s.envSet = true
	return nil
}

// secretFile is the -name-file flag.
type secretFile struct{ s *secret }

// String returns the file's path (not secret).
func (f *secretFile) String() string {
	if f == nil || f.s == nil {
		return ""
	}
	return f.s.file
}

// Set reads the secret from the file at path.
func (f *secretFile) Set(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read secret: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return fmt.Errorf("secret file %s is empty", path)
	}
	*f.s.dst = v
	f.s.file = path
	return nil
}

// bindSecret lets BindEnv set a secret flag from its variable and
// rewrites its usage to say how it is given.
func bindSecret(fs *flag.FlagSet, f *flag.Flag, env string) (handled bool, err error) {
	v, ok := f.Value.(*secretValue)
	if !ok {
		return false, nil
	}
	s := v.s
	s.name, s.env = f.Name, env
	f.Usage += fmt.Sprintf(" (a secret: set $%s or give -%s-file; never on the command line)", env, f.Name)
	val, ok := os.LookupEnv(env)
	if !ok {
		return true, nil
	}
	s.fromEnv = true
	defer func() { s.fromEnv = false }()
	return true, fs.Set(f.Name, val)
}

// CheckSecrets returns an error naming every secret flag of fs (see
// [SecretVar]) that was given on the command line, or given twice (in the
// environment and as a file). Call it after fs.Parse.
func CheckSecrets(fs *flag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := f.Value.(*secretValue)
		if !ok {
			return
		}
		s := v.s
		ways := fmt.Sprintf("give -%s-file FILE", f.Name)
		if s.env != "" {
			ways = fmt.Sprintf("set $%s or %s", s.env, ways)
		}
		switch {
		case s.argSet:
			errs = append(errs, fmt.Errorf("-%s: secrets are not taken on the command line, where other users of the host and /debug/pprof/cmdline can read them: %s", f.Name, ways))
		case s.envSet && s.file != "":
			errs = append(errs, fmt.Errorf("-%s: given both in $%s and in -%s-file %s: give one", f.Name, s.env, f.Name, s.file))
		}
	})
	return errors.Join(errs...)
}
