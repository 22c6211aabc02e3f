package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// pythonString must mean exactly its input to Python, whatever it holds.
func TestPythonStringIsExact(t *testing.T) {
	if testing.Short() {
		t.Skip("runs python3")
	}
	inputs := []string{"", "plain", `quote " and ' and """ and \ and \n literally`, "newline\nand\r\ttabs", "nul \x00 bel \x07 del \x7f",
		"π ☃ 😀", "line sep \u2028 para \u2029", "ends with backslash \\", "\ufffd itself"}
	for _, in := range inputs {
		out, err := exec.Command("python3", "-c", "import sys, ast; sys.stdout.write(ast.literal_eval(sys.argv[1]))", pythonString(in)).Output()
		if err != nil {
			t.Fatalf("python3 could not read %s: %v", pythonString(in), err)
		}
		if string(out) != in {
			t.Errorf("%q came back as %q", in, out)
		}
	}
}

func TestWrapForSage(t *testing.T) {
	for _, tc := range []struct{ lang, code, want string }{
		{"", "1+1", "1+1"},
		{"sage", "1+1", "1+1"},
		{"gp", "2^10", `print(gp.eval("2^10"))`},
		{"html", "<b>x</b>", `html("<b>x</b>")`},
		{"python", "print('a\"b')", `exec("print('a\"b')")`},
	} {
		if got := wrapForSage(tc.lang, tc.code); got != tc.want {
			t.Errorf("wrapForSage(%q, %q) = %q, want %q", tc.lang, tc.code, got, tc.want)
		}
	}
	if got := wrapForSage("r", "1"); !strings.HasPrefix(got, `r.eval("options(bitmapType='cairo')"); print(r.eval("1"))`) {
		t.Errorf("r: %q", got)
	}
}

func TestFindLanguages(t *testing.T) {
	l := findLanguages(func(p string) (string, error) {
		if p == "gp" {
			return "/usr/bin/gp", nil
		}
		return "", errors.New("not found")
	})
	if !l.available["gp"] || !l.available["html"] || l.available["gap"] || l.missing["octave"] != "octave-cli" {
		t.Fatalf("%+v", l)
	}
}

// The Sage cell's languages run through the Sage kernel, each in its own
// program; a language whose program is missing, or that nothing runs, is a
// clear 400, never code run as another language.
func TestSageCellLanguages(t *testing.T) {
	env, _ := newStorageEnv(t)
	sage := env.gw.sageKernel()
	if sage == "" {
		t.Skip("the sagemath kernel is not installed")
	}
	run := func(language, code string) serviceResult {
		t.Helper()
		var res serviceResult
		if r := env.postForm("/service", url.Values{"code": {code}, "language": {language}}, &res); r.StatusCode != http.StatusOK || !res.Success {
			t.Fatalf("%s: %d %+v", language, r.StatusCode, res)
		}
		return res
	}
	if _, err := exec.LookPath("gp"); err == nil {
		res := run("gp", "2^100")
		if res.Stdout != "1267650600228229401496703205376\n" {
			t.Errorf("gp: stdout %q", res.Stdout)
		}
		// Its permalink keeps the code as written, in its language.
		var cell []string
		env.do(http.MethodGet, "/permalink?q="+res.Permalink, "", "", &cell)
		if len(cell) != 3 || cell[0] != "2^100" || cell[1] != "gp" {
			t.Errorf("gp permalink %q", cell)
		}
	}
	if _, err := exec.LookPath("gap"); err == nil {
		if res := run("gap", "Factorial(10);"); strings.TrimSpace(res.Stdout) != "3628800" {
			t.Errorf("gap: stdout %q", res.Stdout)
		}
	}
	// The others, each in its own program when it is installed.
	for _, tc := range []struct{ language, program, code, want string }{
		{"maxima", "maxima-sage", "integrate(x^2, x);", "x^3/3"},
		{"singular", "Singular", "ring r = 0, (x, y), dp; poly f = (x + y)^2; f;", "x2+2xy+y2"},
		{"r", "R", "sum(1:10)", "55"},
	} {
		if _, err := exec.LookPath(tc.program); err != nil {
			continue
		}
		if res := run(tc.language, tc.code); !strings.Contains(strings.ReplaceAll(res.Stdout, " ", ""), strings.ReplaceAll(tc.want, " ", "")) {
			t.Errorf("%s: stdout %q, want %q in it", tc.language, res.Stdout, tc.want)
		}
	}
	res := run("html", `<b id="x">bold "quoted"</b>`)
	if joined := string(res.ExecuteReply) + strings.Join(rawStrings(res.Outputs), ""); !strings.Contains(joined, `bold \"quoted\"`) || !strings.Contains(joined, "text/html") {
		t.Errorf("html: outputs %s", joined)
	}
	if res := run("python", "import sys\nprint(sys.version_info[0])"); res.Stdout != "3\n" {
		t.Errorf("python: stdout %q", res.Stdout)
	}

	var specs struct {
		SageLanguages []string `json:"sage_languages"`
	}
	env.do(http.MethodGet, "/kernelspecs", "", "", &specs)
	if !strings.Contains(strings.Join(specs.SageLanguages, ","), "html") {
		t.Errorf("/kernelspecs sage_languages %v lacks html", specs.SageLanguages)
	}
	for _, missing := range []string{"octave", "macaulay2"} {
		if env.gw.languages.available[missing] {
			continue
		}
		var e apiError
		r := env.postForm("/service", url.Values{"code": {"1+1"}, "language": {missing}}, &e)
		if r.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, "not installed") {
			t.Errorf("%s (not installed): %d %+v", missing, r.StatusCode, e)
		}
		if strings.Contains(strings.Join(specs.SageLanguages, ","), missing) {
			t.Errorf("/kernelspecs offers %s, which is not installed", missing)
		}
	}
	var e apiError
	if r := env.postForm("/kernel", url.Values{"language": {"fortran"}}, &e); r.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, "fortran") {
		t.Errorf("an unknown language: %d %+v", r.StatusCode, e)
	}
}

func rawStrings(raws []json.RawMessage) []string {
	out := make([]string, len(raws))
	for i, r := range raws {
		out[i] = string(r)
	}
	return out
}

// FuzzPythonString: the escapes pythonString writes mean the same in Go,
// so a Go unquote of any valid text's literal must give the text back, and
// the literal must never hold a raw line break (Python would end it there).
func FuzzPythonString(f *testing.F) {
	for _, s := range []string{"", `a"b`, "x\\", "\n\r\t\x00\x7f", "π\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lit := pythonString(s)
		if strings.ContainsAny(lit, "\n\r") {
			t.Fatalf("%q: raw line break in %q", s, lit)
		}
		if !utf8.ValidString(s) {
			return
		}
		back, err := strconv.Unquote(lit)
		if err != nil || back != s {
			t.Fatalf("%q → %q → %q (%v)", s, lit, back, err)
		}
	})
}
