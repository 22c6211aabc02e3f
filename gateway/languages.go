package gateway

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// The Sage cell's languages other than Sage run through the Sage kernel:
// the code is handed to Sage's interface to the language's program (gp to
// PARI/GP's, gap to GAP's, ...), as the Sage Cell Server's front end wraps
// it. cellgate wraps on the server instead, so every client (its own,
// /service, scripts) gets the same languages, and a session or permalink
// keeps the language it was asked in.

// sageLanguage is one language run through the Sage kernel, and the
// program Sage's interface needs ("" for none).
type sageLanguage struct {
	name, program string
}

// sageLanguages are the Sage cell's, but python (a python3 kernelspec runs
// it, when installed) and sage itself.
func sageLanguages() []sageLanguage {
	return []sageLanguage{
		{"gap", "gap"}, {"gp", "gp"}, {"html", ""}, {"macaulay2", "M2"}, {"maxima", "maxima-sage"},
		{"octave", "octave-cli"}, {"python", ""}, {"r", "R"}, {"singular", "Singular"},
	}
}

// errLanguageUnavailable is a Sage-cell language this server cannot run.
var errLanguageUnavailable = errors.New("language unavailable")

// languageError says why a Sage-cell language cannot run here; it is an
// unknown kernel to the error→status table (400).
type languageError struct{ text string }

func (e *languageError) Error() string { return e.text }
func (e *languageError) Unwrap() []error {
	return []error{kernelpool.ErrUnknownKernel, errLanguageUnavailable}
}

// kernelChoice is the kernel a session runs and, for a Sage-cell language
// run through the Sage kernel, that language ("" for the kernel's own).
type kernelChoice struct {
	Kernel, Language string
}

// languages reports which Sage-cell languages this server runs: the
// programs they need are looked for once, at start.
type languages struct {
	available map[string]bool
	missing   map[string]string // language → program not found
}

func findLanguages(lookPath func(string) (string, error)) languages {
	l := languages{available: map[string]bool{}, missing: map[string]string{}}
	for _, lang := range sageLanguages() {
		if lang.program == "" {
			l.available[lang.name] = true
			continue
		}
		if _, err := lookPath(lang.program); err == nil {
			l.available[lang.name] = true
		} else {
			l.missing[lang.name] = lang.program
		}
	}
	return l
}

func defaultLookPath(name string) (string, error) { return exec.LookPath(name) }

// sageKernel is the installed SageMath kernelspec, "" if none.
func (s *Server) sageKernel() string {
	specs := s.pool.Specs()
	if _, ok := specs["sagemath"]; ok {
		return "sagemath"
	}
	for _, name := range jupytermsg.SortedNames(specs) {
		if strings.EqualFold(specs[name].Language, "sage") {
			return name
		}
	}
	return ""
}

// resolveSageChoice is what a Sage-cell route runs for the kernel or
// language a request asks for: an installed kernelspec (by name or
// language) first, then one of the Sage cell's languages through the Sage
// kernel; never a different language's kernel.
func (s *Server) resolveSageChoice(asked string) (kernelChoice, error) {
	kernel, err := s.resolveSageKernel(asked)
	if err == nil {
		return kernelChoice{Kernel: kernel}, nil
	}
	name := strings.ToLower(strings.TrimSpace(asked))
	known := false
	for _, lang := range sageLanguages() {
		known = known || lang.name == name
	}
	if !known {
		return kernelChoice{}, err
	}
	sage := s.sageKernel()
	switch {
	case sage == "":
		return kernelChoice{}, &languageError{fmt.Sprintf("language %q runs through SageMath, which is not installed on this server", name)}
	case !s.languages.available[name]:
		return kernelChoice{}, &languageError{fmt.Sprintf("language %q runs through SageMath's interface to %s, which is not installed on this server", name, s.languages.missing[name])}
	}
	return kernelChoice{Kernel: sage, Language: name}, nil
}

// availableSageLanguages are the Sage-cell languages this server runs
// through its Sage kernel, for clients' language pickers.
func (s *Server) availableSageLanguages() []string {
	out := []string{}
	if s.sageKernel() == "" {
		return out
	}
	for _, lang := range sageLanguages() {
		if s.languages.available[lang.name] {
			out = append(out, lang.name)
		}
	}
	return out
}

// wrapForSage is code in language as the Sage kernel runs it, the way the
// Sage cell's front end wraps it: the code becomes a Python string handed
// to the language's interface (exec for python, html() for html).
func wrapForSage(language, code string) string {
	if language == "" || language == "sage" {
		return code
	}
	if language == "octave" {
		code = "warning('off', 'Octave:gnuplot-graphics')\nset(gcf(), 'visible', 'off')\n" + code +
			"\nif (get(gcf(), 'children'))\n    saveas(gcf(), 'octave.png')\n    close\nendif"
	}
	quoted := pythonString(code)
	var wrapped string
	switch language {
	case "python":
		wrapped = "exec(" + quoted + ")"
	case "html":
		wrapped = "html(" + quoted + ")"
	default:
		wrapped = "print(" + language + ".eval(" + quoted + "))"
	}
	switch language {
	case "octave":
		wrapped = "import os\nif octave.path() != os.getcwd():\n    octave = Octave()\n" + wrapped
	case "r":
		wrapped = "r.eval(\"options(bitmapType='cairo')\"); " + wrapped + "\nr.eval(\"graphics.off()\"); None"
	}
	return wrapped
}

// pythonString is s as a Python string literal that means exactly s,
// whatever it holds (quotes, backslashes, newlines, NULs, any Unicode).
func pythonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '"':
			b.WriteString(`\"`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r == 0xFFFD:
			// Invalid UTF-8 decodes to U+FFFD; write it as what it reads.
			b.WriteString(`\ufffd`)
		case r >= 0x2028 && r <= 0x2029:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
