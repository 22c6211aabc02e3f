package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/storage"
)

func TestKernelFilesAreStoredAndServed(t *testing.T) {
	env, _ := newStorageEnv(t)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	code := `
import base64
png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
open("dot.png", "wb").write(png)
open("table.csv", "w").write("a,b\n1,2\n")
print(len(png))`
	id := c.send("shell", "execute_request", map[string]any{"code": code, "user_expressions": map[string]string{"_sagecell_files": "sys._sage_.new_files()"}})
	frames := c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" })
	announced, ok := find(frames, session.FilesMsgType)
	if !ok || announced.ParentHeader.MsgID != id {
		t.Fatalf("no %s message before the reply: %+v", session.FilesMsgType, frames)
	}
	var files struct {
		Files []session.FileLink `json:"files"`
	}
	raw, _ := json.Marshal(announced.Content)
	_ = json.Unmarshal(raw, &files)
	want := map[string]string{"dot.png": "image/png", "table.csv": "text/csv"}
	if len(files.Files) != 2 {
		t.Fatalf("files %+v", files.Files)
	}
	for _, f := range files.Files {
		status, body, h := fetch(t, f.URL)
		local, err := os.ReadFile(filepath.Join(env.gw.sessions.get(k.ID).Kernel().WorkDir, f.Name))
		if status != http.StatusOK || err != nil || !bytes.Equal(body, local) {
			t.Errorf("%s: status %d, %d bytes, local %d bytes (%v)", f.Name, status, len(body), len(local), err)
		}
		if !strings.HasPrefix(h.Get("Content-Type"), want[f.Name]) || h.Get("ETag") == "" || h.Get("Content-Length") == "" {
			t.Errorf("%s headers %v", f.Name, h)
		}
	}
	reply := frames[len(frames)-1]
	var exprs map[string]struct {
		Data map[string]string `json:"data"`
	}
	_ = json.Unmarshal(reply.Content["user_expressions"], &exprs)
	if got := exprs["_sagecell_files"].Data["text/plain"]; got != `["dot.png","table.csv"]` {
		t.Errorf("_sagecell_files = %q", got)
	}
	// As the Sage cell's replies: the names in payload[0].new_files.
	var payload []struct {
		NewFiles []string `json:"new_files"`
	}
	_ = json.Unmarshal(reply.Content["payload"], &payload)
	if len(payload) == 0 || strings.Join(payload[0].NewFiles, ",") != "dot.png,table.csv" {
		t.Errorf("payload %s", reply.Content["payload"])
	}
	var meta struct {
		Cellgate struct {
			Permalink string `json:"permalink"`
		} `json:"cellgate"`
	}
	raw, _ = json.Marshal(reply.Metadata)
	_ = json.Unmarshal(raw, &meta)
	if meta.Cellgate.Permalink == "" {
		t.Errorf("reply metadata has no permalink: %s", raw)
	}
	// Sage-cell clients fetch by name under the kernel.
	if status, body, _ := fetch(t, env.url("/kernel/"+k.ID+"/files/table.csv")); status != http.StatusOK || string(body) != "a,b\n1,2\n" {
		t.Errorf("kernel file by name: %d %q", status, body)
	}
	// Range requests and a kernel that is gone.
	url := files.Files[0].URL
	env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
	env.waitEnded(k.ID)
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Range", "bytes=1-3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || len(part) != 3 {
		t.Errorf("range after the kernel ended: %d, %d bytes", resp.StatusCode, len(part))
	}
	if status, _, _ := fetch(t, env.url("/files/nope/dot.png")); status != http.StatusNotFound {
		t.Errorf("unknown file: %d", status)
	}
}

// execFiles runs code asking for _sagecell_files and returns the frames
// up to its reply and idle status, and the files announced for it.
func execFiles(c *wsClient, code string) (string, []frame, []session.FileLink) {
	c.t.Helper()
	id := c.send("shell", "execute_request", map[string]any{"code": code, "silent": false,
		"user_expressions": map[string]string{"_sagecell_files": "sys._sage_.new_files()"}})
	frames := replyAndIdle(c, id)
	return id, frames, announcedFiles(frames, id)
}

func announcedFiles(frames []frame, id string) []session.FileLink {
	var links []session.FileLink
	for _, f := range frames {
		if f.Header.MsgType == session.FilesMsgType && f.ParentHeader.MsgID == id {
			var files struct{ Files []session.FileLink }
			raw, _ := json.Marshal(f.Content)
			_ = json.Unmarshal(raw, &files)
			links = append(links, files.Files...)
		}
	}
	return links
}

// File names reach storage decoded exactly once: "100%.txt" is served,
// and "a%41" is not "aA".
func TestFileNamesAreDecodedOnce(t *testing.T) {
	env, _ := newStorageEnv(t)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	want := map[string]string{"100%.txt": "percent", "a%41": "literal", "aA": "upper", "sp ace.txt": "space"}
	code := "for name, text in " + pyDict(want) + ".items():\n    open(name, 'w').write(text)\n"
	_, _, links := execFiles(c, code)
	if len(links) != len(want) {
		t.Fatalf("announced %+v", links)
	}
	for _, l := range links {
		if status, body, _ := fetch(t, l.URL); status != http.StatusOK || string(body) != want[l.Name] {
			t.Errorf("%s at %s: %d %q", l.Name, l.URL, status, body)
		}
	}
	for path, text := range map[string]string{"100%25.txt": "percent", "a%2541": "literal", "a%41": "upper", "aA": "upper", "sp%20ace.txt": "space"} {
		if status, body, _ := fetch(t, env.url("/kernel/"+k.ID+"/files/"+path)); status != http.StatusOK || string(body) != text {
			t.Errorf("/kernel/…/files/%s: %d %q, want %q", path, status, body, text)
		}
	}
}

func pyDict(m map[string]string) string {
	b, _ := json.Marshal(m)
	return string(b)
}

// Executions sent while an earlier one still runs are measured from the
// directory as the earlier upload found it: no file is uploaded twice.
func TestPipelinedExecutionsUploadEachFileOnce(t *testing.T) {
	env, _ := newStorageEnv(t)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	first := c.send("shell", "execute_request", map[string]any{"code": "import time\nopen('a.txt', 'w').write('a')\ntime.sleep(0.3)", "silent": false})
	second := c.send("shell", "execute_request", map[string]any{"code": "import time\ntime.sleep(0.5)\nopen('b.txt', 'w').write('b')", "silent": false})
	frames := replyAndIdle(c, first)
	frames = append(frames, replyAndIdle(c, second)...)
	names := func(id string) []string {
		var out []string
		for _, l := range announcedFiles(frames, id) {
			out = append(out, l.Name)
		}
		return out
	}
	if got := names(first); len(got) != 1 || got[0] != "a.txt" {
		t.Errorf("first execution announced %v", got)
	}
	if got := names(second); len(got) != 1 || got[0] != "b.txt" {
		t.Errorf("second execution announced %v, want b.txt alone", got)
	}
}

// A database that hangs delays the file list, never the kernel: the
// reply comes after ReplyHold, other output flows meanwhile, and the
// failure is told when it comes.
func TestSlowStorageNeverStallsTheKernel(t *testing.T) {
	ts := startTestStorage(t, filepath.Join(t.TempDir(), "db"))
	env := newTestEnv(t, 1, 4, func(c *Config) {
		c.Storage = ts.gateway()
		c.Storage.UploadTimeout = 30 * time.Second
		c.Storage.ReplyHold = 50 * time.Millisecond
	})
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	execFiles(c, "open('warm.txt', 'w').write('up')")
	_ = ts.embedded.Close()

	first := c.execute("open('late.txt', 'w').write('x')")
	frames := replyAndIdle(c, first)
	second := c.execute("print('meanwhile')")
	frames = append(frames, c.until(func(f frame) bool {
		return f.ParentHeader.MsgID == first && strings.Contains(f.str("text"), "could not be stored")
	})...)
	at := func(match func(frame) bool) int {
		for i, f := range frames {
			if match(f) {
				return i
			}
		}
		return -1
	}
	reply := at(func(f frame) bool { return f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == first })
	other := at(func(f frame) bool { return f.ParentHeader.MsgID == second && f.str("text") == "meanwhile\n" })
	failed := at(func(f frame) bool {
		return f.ParentHeader.MsgID == first && strings.Contains(f.str("text"), "could not be stored")
	})
	if reply < 0 || other < 0 || reply > failed || other > failed {
		t.Errorf("reply at %d, next execution's output at %d, upload failure at %d: storage held the kernel up", reply, other, failed)
	}
	if !strings.Contains(streamText(frames), "still being stored") {
		t.Error("the client was not told its files were still being stored")
	}
}

// Executions queued past the snapshot cap, and a directory too big to
// scan whole, are told about rather than silently skipped.
func TestUntrackedFilesAreToldAbout(t *testing.T) {
	ts := startTestStorageWith(t, filepath.Join(t.TempDir(), "db"), storage.FileLimits{MaxEntries: 20})
	env := newTestEnv(t, 1, 4, func(c *Config) { c.Storage = ts.gateway() })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	c.execute("import time\ntime.sleep(1)")
	var last string
	for range storage.DefaultFileLimits().MaxTrackedExecutions + 1 {
		last = c.execute("pass")
	}
	frames := replyAndIdle(c, last)
	if !strings.Contains(streamText(frames), "are not uploaded") {
		t.Error("no notice for an execution whose files are not tracked")
	}
	_, frames, _ = execFiles(c, "for i in range(40):\n    open('f%d.txt' % i, 'w').write('x')")
	if !strings.Contains(streamText(frames), "too many entries") {
		t.Errorf("no notice of a truncated scan: %q", streamText(frames))
	}
}

// Behind a proxy that serves cellgate under a path (--public-url
// https://host/sub/), every file link keeps the path: the links announced
// with an execution, and the redirect Sage-cell clients follow from
// /kernel/{id}/files/{name}. Both are built one way (fileURL).
func TestFileLinksKeepThePublicURLPath(t *testing.T) {
	ts := startTestStorage(t, filepath.Join(t.TempDir(), "db"))
	const public = "https://cells.example.org/sub/"
	env := newTestEnv(t, 1, 4, func(c *Config) {
		c.Storage = ts.gateway()
		c.PublicURL = "https://cells.example.org/sub"
	})
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	_, _, links := execFiles(c, "open('a b.txt', 'w').write('x')")
	if len(links) != 1 || links[0].URL != public+"files/"+linkID(t, links[0].URL)+"/a%20b.txt" {
		t.Fatalf("announced links %+v, want one under %sfiles/", links, public)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(env.url("/kernel/" + k.ID + "/files/a%20b.txt"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != links[0].URL {
		t.Errorf("redirect %d to %q, want %q", resp.StatusCode, resp.Header.Get("Location"), links[0].URL)
	}
	// The proxy strips the prefix: what reaches cellgate is served.
	if status, body, _ := fetch(t, env.url(strings.TrimPrefix(links[0].URL, strings.TrimSuffix(public, "/")))); status != http.StatusOK || string(body) != "x" {
		t.Errorf("GET of the link's path: %d %q", status, body)
	}
}

// linkID is the upload id in a file link .../files/ID/NAME.
func linkID(t *testing.T, link string) string {
	t.Helper()
	_, rest, ok := strings.Cut(link, "/files/")
	id, _, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || id == "" {
		t.Fatalf("link %q has no /files/ID/", link)
	}
	return id
}
