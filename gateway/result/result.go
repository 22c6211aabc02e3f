// Package result keeps what executions show, as a notebook saves it: each
// execution's outputs in nbformat v4 and the state of the widgets they
// display (ipywidgets' widget-state form, Output widgets with the outputs
// they captured), so that a permalink can open with its result and no
// kernel.
//
// A Capture follows one session's messages, as a front end would: outputs
// go to the execution (or the Output widget) whose message caused them,
// clear_output and update_display_data apply, and a widget's state is its
// comm_open updated by every "update" either side sends. Everything it
// keeps is bounded by a byte budget: an execution over it keeps what fit
// and says it was truncated.
package result

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"
)

// DefaultBudget is the inline size of one result (outputs and widget
// state), and of a session's widget state.
const DefaultBudget = 1 << 20

// LargeImageBytes is the size (base64) from which an image output is kept
// apart from the result's inline budget: stored as a file (GridFS) of its
// own, within ImageBudget per result.
const LargeImageBytes = 64 << 10

// ImageBudget bounds the large images of one result (base64 bytes).
const ImageBudget = 16 << 20

// maxRuns bounds the executions a capture follows at once: a client that
// queues thousands of executions gets the first ones captured.
const maxRuns = 64

// maxWidgets bounds the widget models a capture follows.
const maxWidgets = 2000

// WidgetViewMIME is the MIME type of a widget's view in display data.
const WidgetViewMIME = "application/vnd.jupyter.widget-view+json"

// Result is what an execution showed, as stored with a permalink.
type Result struct {
	Outputs []Output `json:"outputs"`
	// Widgets is ipywidgets' application/vnd.jupyter.widget-state+json:
	// the models the outputs display, and those they refer to.
	Widgets *WidgetState `json:"widgets,omitempty"`
	Files   []File       `json:"files,omitempty"`
	// Created is when the execution began.
	Created time.Time `json:"created"`
	// Truncated is set when outputs went over the budget; the outputs
	// then end with a stream that says so.
	Truncated bool `json:"truncated,omitempty"`
}

// File is a file the execution wrote, with the link it is served at.
type File struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	Size        int64  `json:"size,omitempty"`
	ContentType string `json:"content_type,omitempty"`
}

// WidgetState is the widget-state form nbformat stores in a notebook's
// metadata.
type WidgetState struct {
	VersionMajor int               `json:"version_major"`
	VersionMinor int               `json:"version_minor"`
	State        map[string]Widget `json:"state"`
}

// Widget is one model's saved state.
type Widget struct {
	ModelName          string                     `json:"model_name"`
	ModelModule        string                     `json:"model_module"`
	ModelModuleVersion string                     `json:"model_module_version"`
	State              map[string]json.RawMessage `json:"state"`
}

// Output is one nbformat v4 output.
type Output struct {
	OutputType string `json:"output_type"`
	// stream
	Name string `json:"name,omitempty"`
	Text string `json:"text,omitempty"`
	// display_data, execute_result
	Data           json.RawMessage `json:"data,omitempty"`
	Metadata       json.RawMessage `json:"metadata,omitempty"`
	ExecutionCount json.RawMessage `json:"execution_count,omitempty"`
	// error
	Ename     string   `json:"ename,omitempty"`
	Evalue    string   `json:"evalue,omitempty"`
	Traceback []string `json:"traceback,omitempty"`

	displayID string
}

// MarshalJSON writes the fields nbformat requires of each type, and only
// those.
func (o Output) MarshalJSON() ([]byte, error) {
	v := map[string]any{"output_type": o.OutputType}
	switch o.OutputType {
	case "stream":
		v["name"], v["text"] = o.Name, o.Text
	case "display_data", "execute_result":
		v["data"], v["metadata"] = rawOr(o.Data, "{}"), rawOr(o.Metadata, "{}")
		if o.OutputType == "execute_result" {
			v["execution_count"] = rawOr(o.ExecutionCount, "null")
		}
	case "error":
		tb := o.Traceback
		if tb == nil {
			tb = []string{}
		}
		v["ename"], v["evalue"], v["traceback"] = o.Ename, o.Evalue, tb
	}
	return json.Marshal(v)
}

func rawOr(raw json.RawMessage, empty string) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" && empty != "null" {
		return json.RawMessage(empty)
	}
	return raw
}

// size is what an output costs against the inline budget, with its large
// images (LargeImages) if they are not kept apart.
func (o *Output) size(imagesApart bool) int {
	n := len(o.Text) + len(o.Data) + len(o.Metadata) + len(o.Ename) + len(o.Evalue)
	for _, line := range o.Traceback {
		n += len(line)
	}
	if imagesApart {
		n -= o.largeImageBytes()
	}
	return n + 32
}

// imageMIMEs are the image types large ones of which are kept apart.
func imageMIME(mime string) bool {
	return mime == "image/png" || mime == "image/jpeg" || mime == "image/gif"
}

// LargeImages are the MIME types of o's data that are images of at least
// LargeImageBytes, with their base64 text.
func (o *Output) LargeImages() map[string]string {
	if len(o.Data) < LargeImageBytes {
		return nil
	}
	var data map[string]json.RawMessage
	if json.Unmarshal(o.Data, &data) != nil {
		return nil
	}
	var out map[string]string
	for mime, raw := range data {
		if !imageMIME(mime) || len(raw) < LargeImageBytes {
			continue
		}
		var text string
		if json.Unmarshal(raw, &text) == nil {
			if out == nil {
				out = map[string]string{}
			}
			out[mime] = text
		}
	}
	return out
}

func (o *Output) largeImageBytes() int {
	n := 0
	for _, text := range o.LargeImages() {
		n += len(text)
	}
	return n
}

// Capture follows one session's messages. It is safe for concurrent use.
type Capture struct {
	budget int
	// imagesApart keeps large images out of the inline budget (they are
	// stored as files), within ImageBudget.
	imagesApart bool

	mu   sync.Mutex
	runs map[string]*run // by execute_request msg_id
	// last is the last execution that finished.
	last *run
	// widgets are the open widget models by comm id, widgetBytes their
	// size; capturing maps an Output widget's msg_id to its model ids.
	widgets     map[string]*widget
	widgetBytes int
	capturing   map[string][]string
}

type run struct {
	code    string
	began   time.Time
	outputs outputs
	done    func(Result)
}

type widget struct {
	Widget
	outputs outputs // an Output widget's captured outputs
	bytes   int
}

// outputs is an output list as a front end keeps it: streams merged,
// clear_output(wait=True) applied at the next output, bounded by budget.
type outputs struct {
	items      []Output
	bytes      int
	imageBytes int // large images kept apart
	clearAtNew bool
	truncated  bool
}

// NewCapture follows a session, keeping budget bytes per result
// (DefaultBudget if not positive) and, with imagesApart, large images
// besides (within ImageBudget; they are stored as files).
func NewCapture(budget int, imagesApart bool) *Capture {
	if budget <= 0 {
		budget = DefaultBudget
	}
	return &Capture{budget: budget, imagesApart: imagesApart, runs: map[string]*run{}, widgets: map[string]*widget{}, capturing: map[string][]string{}}
}

// Begin follows the execution whose execute_request has msgID; done gets
// its result once the kernel is idle after it. It reports false, and
// follows nothing, when too many executions are followed already.
func (c *Capture) Begin(msgID, code string, done func(Result)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.runs) >= maxRuns {
		return false
	}
	c.runs[msgID] = &run{code: code, began: time.Now(), done: done}
	return true
}

// Kernel takes in a message from the kernel on iopub. parentMsgID is its
// parent's msg_id.
func (c *Capture) Kernel(msgType, parentMsgID string, content []byte) {
	var finished *run
	var res Result
	c.mu.Lock()
	switch msgType {
	case "stream", "display_data", "execute_result", "error", "clear_output", "update_display_data":
		c.outputLocked(msgType, parentMsgID, content)
	case "comm_open":
		c.openLocked(content)
	case "comm_msg":
		c.updateLocked(content)
	case "comm_close":
		c.closeLocked(content)
	case "status":
		r := c.runs[parentMsgID]
		var st struct {
			ExecutionState string `json:"execution_state"`
		}
		if r != nil && json.Unmarshal(content, &st) == nil && st.ExecutionState == "idle" {
			delete(c.runs, parentMsgID)
			c.last = r
			finished, res = r, c.resultLocked(r)
		}
	}
	c.mu.Unlock()
	if finished != nil && finished.done != nil {
		finished.done(res)
	}
}

// Client takes in a message a client sent the kernel: a widget's update
// from the page (ipywidgets before 8 sends no echo of it back).
func (c *Capture) Client(msgType string, content []byte) {
	if msgType != "comm_msg" {
		return
	}
	c.mu.Lock()
	c.updateLocked(content)
	c.mu.Unlock()
}

// Last is the result of the last execution that finished, if its code was
// code, with its widgets as they are now (moved since by the reader).
func (c *Capture) Last(code string) (Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil || c.last.code != code {
		return Result{}, false
	}
	return c.resultLocked(c.last), true
}

func (c *Capture) outputLocked(msgType, parentMsgID string, content []byte) {
	var target *outputs
	var w *widget
	if ids := c.capturing[parentMsgID]; len(ids) > 0 {
		// An Output widget captures what its msg_id causes, as front ends do.
		w = c.widgets[ids[len(ids)-1]]
	}
	budget := c.budget
	if w != nil {
		target = &w.outputs
		// A widget's captured outputs count against the session's widgets.
		budget = c.budget - c.widgetBytes + w.outputs.bytes
		before := w.outputs.bytes
		defer func() { c.widgetBytes += w.outputs.bytes - before }()
	}
	if target == nil {
		r := c.runs[parentMsgID]
		if r == nil {
			if msgType == "update_display_data" {
				c.updateDisplayLocked(content)
			}
			return
		}
		target = &r.outputs
	}
	switch msgType {
	case "clear_output":
		var cl struct {
			Wait bool `json:"wait"`
		}
		_ = json.Unmarshal(content, &cl)
		if cl.Wait {
			target.clearAtNew = true
		} else {
			target.clear()
		}
		return
	case "update_display_data":
		c.updateDisplayLocked(content)
		return
	}
	o, ok := parseOutput(msgType, content)
	if !ok {
		return
	}
	target.add(o, budget, c.imagesApart)
}

// updateDisplayLocked applies update_display_data to every output kept
// with its display_id, in the running and the last execution.
func (c *Capture) updateDisplayLocked(content []byte) {
	o, ok := parseOutput("display_data", content)
	if !ok || o.displayID == "" {
		return
	}
	lists := []*outputs{}
	for _, r := range c.runs {
		lists = append(lists, &r.outputs)
	}
	if c.last != nil {
		lists = append(lists, &c.last.outputs)
	}
	for _, l := range lists {
		for i := range l.items {
			if l.items[i].displayID == o.displayID && l.items[i].OutputType != "stream" {
				grow := len(o.Data) + len(o.Metadata) - len(l.items[i].Data) - len(l.items[i].Metadata)
				if l.bytes+grow > c.budget {
					l.truncated = true
					continue
				}
				l.bytes += grow
				l.items[i].Data, l.items[i].Metadata = o.Data, o.Metadata
			}
		}
	}
}

func parseOutput(msgType string, content []byte) (Output, bool) {
	// A message's content has an output's fields, by the same names.
	var m struct {
		Output
		Transient struct {
			DisplayID string `json:"display_id"`
		} `json:"transient"`
	}
	if json.Unmarshal(content, &m) != nil {
		return Output{}, false
	}
	o := Output{OutputType: msgType}
	switch msgType {
	case "stream":
		if m.Name != "stdout" && m.Name != "stderr" {
			return Output{}, false
		}
		o.Name, o.Text = m.Name, m.Text
	case "display_data", "execute_result":
		if !isObject(m.Data) {
			return Output{}, false
		}
		o.Data, o.Metadata, o.displayID = m.Data, m.Metadata, m.Transient.DisplayID
		if !isObject(o.Metadata) {
			o.Metadata = json.RawMessage("{}")
		}
		if msgType == "execute_result" {
			o.ExecutionCount = m.ExecutionCount
		}
	case "error":
		o.Ename, o.Evalue, o.Traceback = m.Ename, m.Evalue, m.Traceback
	}
	return o, true
}

func isObject(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return strings.HasPrefix(s, "{")
}

func (l *outputs) clear() {
	l.items, l.bytes, l.imageBytes, l.clearAtNew = nil, 0, 0, false
}

// add appends o, merging a stream into the stream before it; what goes
// over budget is left out (a stream keeps what fits).
func (l *outputs) add(o Output, budget int, imagesApart bool) {
	if l.clearAtNew {
		l.clear()
	}
	if o.OutputType == "stream" {
		n := len(l.items)
		merge := n > 0 && l.items[n-1].OutputType == "stream" && l.items[n-1].Name == o.Name
		room := budget - l.bytes
		if !merge {
			room -= o.size(false) - len(o.Text)
		}
		if room <= 0 {
			l.truncated = true
			return
		}
		if len(o.Text) > room {
			o.Text = truncateUTF8(o.Text, room)
			l.truncated = true
		}
		if merge {
			l.items[n-1].Text += o.Text
			l.bytes += len(o.Text)
			return
		}
	}
	size, images := o.size(imagesApart), 0
	if imagesApart {
		images = o.largeImageBytes()
	}
	if l.bytes+size > budget || l.imageBytes+images > ImageBudget {
		l.truncated = true
		return
	}
	l.bytes += size
	l.imageBytes += images
	l.items = append(l.items, o)
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// commMessage is a widget comm message in either protocol: 2.x (ipywidgets
// 7 and 8: data {state, buffer_paths}, updates {method: "update" or
// "echo_update", state}) or ipywidgets 6's (Debian's: comm_open data is the
// state itself, the page sends {method: "backbone", sync_data}, and the
// kernel {method: "update", state, buffers}).
type commMessage struct {
	CommID     string                     `json:"comm_id"`
	TargetName string                     `json:"target_name"`
	Data       map[string]json.RawMessage `json:"data"`
}

// patch is the state a comm message sets, and the keys held in binary
// buffers (which results do not store).
func (m commMessage) patch(open bool) (state map[string]json.RawMessage, buffered map[string]bool) {
	buffered = map[string]bool{}
	var paths [][]any
	_ = json.Unmarshal(m.Data["buffer_paths"], &paths)
	for _, p := range paths {
		if len(p) > 0 {
			if key, ok := p[0].(string); ok {
				buffered[key] = true
			}
		}
	}
	for _, field := range []string{"buffers", "buffer_keys"} {
		var keys []string
		_ = json.Unmarshal(m.Data[field], &keys)
		for _, k := range keys {
			buffered[k] = true
		}
	}
	if open {
		if raw, ok := m.Data["state"]; ok && isObject(raw) {
			_ = json.Unmarshal(raw, &state)
			return state, buffered
		}
		// ipywidgets 6: the data is the state.
		state = map[string]json.RawMessage{}
		for k, v := range m.Data {
			if k != "buffers" && k != "buffer_paths" {
				state[k] = v
			}
		}
		return state, buffered
	}
	switch stringOf(m.Data["method"]) {
	case "update", "echo_update":
		_ = json.Unmarshal(m.Data["state"], &state)
	case "backbone":
		_ = json.Unmarshal(m.Data["sync_data"], &state)
	}
	return state, buffered
}

func (c *Capture) openLocked(content []byte) {
	var m commMessage
	if json.Unmarshal(content, &m) != nil || m.TargetName != "jupyter.widget" || m.CommID == "" {
		return
	}
	if _, open := c.widgets[m.CommID]; !open && len(c.widgets) >= maxWidgets {
		return
	}
	state, buffered := m.patch(true)
	w := &widget{Widget: Widget{State: map[string]json.RawMessage{}}}
	c.closeID(m.CommID)
	c.widgets[m.CommID] = w
	c.setState(m.CommID, w, state, buffered)
	w.ModelName = stringOf(w.State["_model_name"])
	w.ModelModule = stringOf(w.State["_model_module"])
	w.ModelModuleVersion = stringOf(w.State["_model_module_version"])
	if w.ModelModuleVersion == "" {
		w.ModelModuleVersion = "*"
	}
}

func (c *Capture) updateLocked(content []byte) {
	var m commMessage
	if json.Unmarshal(content, &m) != nil {
		return
	}
	if w := c.widgets[m.CommID]; w != nil {
		state, buffered := m.patch(false)
		c.setState(m.CommID, w, state, buffered)
	}
}

func (c *Capture) closeLocked(content []byte) {
	var m commMessage
	if json.Unmarshal(content, &m) == nil {
		c.closeID(m.CommID)
	}
}

func (c *Capture) closeID(id string) {
	w := c.widgets[id]
	if w == nil {
		return
	}
	c.widgetBytes -= w.bytes + w.outputs.bytes
	c.uncapture(id, w)
	delete(c.widgets, id)
}

// setState applies a state patch, leaving out what is in buffers and what
// would take the session's widgets over budget.
func (c *Capture) setState(id string, w *widget, patch map[string]json.RawMessage, skip map[string]bool) {
	for k, v := range patch {
		if skip[k] {
			continue
		}
		grow := len(k) + len(v) - len(w.State[k])
		if _, had := w.State[k]; had {
			grow -= len(k)
		}
		if c.widgetBytes+grow > c.budget {
			continue
		}
		c.widgetBytes += grow
		w.bytes += grow
		if k == "msg_id" {
			c.uncapture(id, w)
		}
		w.State[k] = v
		if k == "msg_id" {
			if msgID := stringOf(v); msgID != "" {
				c.capturing[msgID] = append(c.capturing[msgID], id)
			}
		}
		if k == "outputs" {
			// The kernel set the outputs itself (Output.outputs = ...).
			c.widgetBytes -= w.outputs.bytes
			w.outputs = outputs{}
		}
	}
}

func (c *Capture) uncapture(id string, w *widget) {
	msgID := stringOf(w.State["msg_id"])
	ids := c.capturing[msgID]
	for i, x := range ids {
		if x == id {
			ids = append(ids[:i:i], ids[i+1:]...)
			break
		}
	}
	if len(ids) == 0 {
		delete(c.capturing, msgID)
	} else {
		c.capturing[msgID] = ids
	}
}

func stringOf(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

// resultLocked is r's result with the widgets its outputs show.
func (c *Capture) resultLocked(r *run) Result {
	res := Result{Outputs: append([]Output(nil), r.outputs.items...), Created: r.began.UTC(), Truncated: r.outputs.truncated}
	if res.Outputs == nil {
		res.Outputs = []Output{}
	}
	if state := c.reachableLocked(res.Outputs); len(state) > 0 {
		res.Widgets = &WidgetState{VersionMajor: 2, VersionMinor: 0, State: state}
	}
	if res.Truncated {
		res.Outputs = append(res.Outputs, Output{OutputType: "stream", Name: "stderr",
			Text: fmt.Sprintf("[cellgate] output truncated: a stored result keeps at most %d KiB\n", c.budget>>10)})
	}
	return res
}

// reachableLocked is the saved state of the widgets outputs display and,
// from those, every model their state refers to ("IPY_MODEL_" + id).
func (c *Capture) reachableLocked(outs []Output) map[string]Widget {
	state := map[string]Widget{}
	var queue []string
	visit := func(raw []byte) {
		for _, id := range modelRefs(raw) {
			if _, seen := state[id]; !seen {
				if w := c.widgets[id]; w != nil {
					state[id] = Widget{}
					queue = append(queue, id)
				}
			}
		}
	}
	for _, o := range outs {
		visit(widgetViewOf(o.Data))
	}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		w := c.widgets[id]
		saved := w.Widget
		saved.State = make(map[string]json.RawMessage, len(w.State)+1)
		for k, v := range w.State {
			saved.State[k] = v
			visit(v)
		}
		_, kernelSet := w.State["outputs"]
		if len(w.outputs.items) > 0 || w.ModelName == "OutputModel" && !kernelSet {
			raw, err := json.Marshal(append([]Output{}, w.outputs.items...))
			if err == nil {
				saved.State["outputs"] = raw
			}
			for _, o := range w.outputs.items {
				visit(widgetViewOf(o.Data))
			}
		}
		state[id] = saved
	}
	return state
}

// widgetViewOf is the model reference of a widget view in display data.
func widgetViewOf(data json.RawMessage) []byte {
	if len(data) == 0 || !strings.Contains(string(data), WidgetViewMIME) {
		return nil
	}
	var d map[string]struct {
		ModelID string `json:"model_id"`
	}
	if json.Unmarshal(data, &d) != nil || d[WidgetViewMIME].ModelID == "" {
		return nil
	}
	return []byte("IPY_MODEL_" + d[WidgetViewMIME].ModelID)
}

// modelRefs finds every "IPY_MODEL_<id>" in raw.
func modelRefs(raw []byte) []string {
	const prefix = "IPY_MODEL_"
	var ids []string
	s := string(raw)
	for {
		i := strings.Index(s, prefix)
		if i < 0 {
			return ids
		}
		s = s[i+len(prefix):]
		j := 0
		for j < len(s) && (isIDByte(s[j])) {
			j++
		}
		if j > 0 {
			ids = append(ids, s[:j])
		}
		s = s[j:]
	}
}

func isIDByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_'
}
