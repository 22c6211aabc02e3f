package result

import (
	"encoding/json"
	"strings"
	"testing"
)

// finish begins an execution, feeds it messages (type, parent, content),
// and returns the result its idle status gives.
func finish(t *testing.T, c *Capture, code string, msgs [][3]string) Result {
	t.Helper()
	var got *Result
	if !c.Begin("exec", code, func(r Result) { got = &r }) {
		t.Fatal("Begin refused")
	}
	for _, m := range msgs {
		c.Kernel(m[0], m[1], []byte(m[2]))
	}
	c.Kernel("status", "exec", []byte(`{"execution_state":"idle"}`))
	if got == nil {
		t.Fatal("no result after the idle status")
	}
	return *got
}

func outputsJSON(t *testing.T, r Result) string {
	t.Helper()
	b, err := json.Marshal(r.Outputs)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestOutputsAsANotebookKeepsThem(t *testing.T) {
	c := NewCapture(0, false)
	r := finish(t, c, "x", [][3]string{
		{"stream", "exec", `{"name":"stdout","text":"a"}`},
		{"stream", "exec", `{"name":"stdout","text":"b\n"}`},
		{"stream", "other", `{"name":"stdout","text":"not ours"}`},
		{"display_data", "exec", `{"data":{"text/plain":"old"},"metadata":{},"transient":{"display_id":"d1"}}`},
		{"update_display_data", "exec", `{"data":{"text/plain":"new"},"metadata":{},"transient":{"display_id":"d1"}}`},
		{"execute_result", "exec", `{"data":{"text/plain":"2"},"metadata":{},"execution_count":3}`},
		{"error", "exec", `{"ename":"E","evalue":"v","traceback":["t"]}`},
	})
	want := `[{"name":"stdout","output_type":"stream","text":"ab\n"},` +
		`{"data":{"text/plain":"new"},"metadata":{},"output_type":"display_data"},` +
		`{"data":{"text/plain":"2"},"execution_count":3,"metadata":{},"output_type":"execute_result"},` +
		`{"ename":"E","evalue":"v","output_type":"error","traceback":["t"]}]`
	if got := outputsJSON(t, r); got != want {
		t.Fatalf("outputs\n got %s\nwant %s", got, want)
	}
	if r.Truncated || r.Widgets != nil || r.Created.IsZero() {
		t.Fatalf("truncated %v, widgets %v, created %v", r.Truncated, r.Widgets, r.Created)
	}
}

func TestClearOutput(t *testing.T) {
	c := NewCapture(0, false)
	r := finish(t, c, "x", [][3]string{
		{"stream", "exec", `{"name":"stdout","text":"gone"}`},
		{"clear_output", "exec", `{"wait":false}`},
		{"stream", "exec", `{"name":"stdout","text":"kept"}`},
		{"clear_output", "exec", `{"wait":true}`},
		{"stream", "exec", `{"name":"stderr","text":"last"}`},
	})
	if got := outputsJSON(t, r); got != `[{"name":"stderr","output_type":"stream","text":"last"}]` {
		t.Fatalf("outputs %s", got)
	}
}

func TestBudgetTruncatesAndSaysSo(t *testing.T) {
	c := NewCapture(1000, false)
	big := strings.Repeat("é", 800) // 1600 bytes
	r := finish(t, c, "x", [][3]string{
		{"stream", "exec", `{"name":"stdout","text":"` + big + `"}`},
		{"display_data", "exec", `{"data":{"text/plain":"no room"},"metadata":{}}`},
	})
	if !r.Truncated {
		t.Fatal("not marked truncated")
	}
	if n := len(r.Outputs); n != 2 {
		t.Fatalf("%d outputs, want the cut stream and the notice", n)
	}
	if text := r.Outputs[0].Text; len(text) > 1000 || !strings.HasPrefix(big, text) || !strings.HasSuffix(text, "é") {
		t.Fatalf("stream kept %d bytes, not a whole-character prefix within budget", len(text))
	}
	if !strings.Contains(r.Outputs[1].Text, "output truncated") {
		t.Fatalf("last output %+v does not say the result was truncated", r.Outputs[1])
	}
}

const sliderOpen = `{"comm_id":"s1","target_name":"jupyter.widget","data":{"state":{"_model_name":"IntSliderModel","_model_module":"@jupyter-widgets/controls","_model_module_version":"1.0.0","value":1,"layout":"IPY_MODEL_l1"}}}`
const layoutOpen = `{"comm_id":"l1","target_name":"jupyter.widget","data":{"state":{"_model_name":"LayoutModel","_model_module":"@jupyter-widgets/base","width":"50%"}}}`
const outputOpen = `{"comm_id":"o1","target_name":"jupyter.widget","data":{"state":{"_model_name":"OutputModel","_model_module":"@jupyter-widgets/output","msg_id":""}}}`
const boxView = `{"data":{"application/vnd.jupyter.widget-view+json":{"model_id":"b1","version_major":2}},"metadata":{}}`
const boxOpen = `{"comm_id":"b1","target_name":"jupyter.widget","data":{"state":{"_model_name":"VBoxModel","_model_module":"@jupyter-widgets/controls","children":["IPY_MODEL_s1","IPY_MODEL_o1"]}}}`

func TestWidgetStateFollowsBothSidesAndOutputWidgetsCapture(t *testing.T) {
	c := NewCapture(0, false)
	r := finish(t, c, "interact", [][3]string{
		{"comm_open", "exec", layoutOpen},
		{"comm_open", "exec", sliderOpen},
		{"comm_open", "exec", outputOpen},
		{"comm_open", "exec", boxOpen},
		{"comm_open", "exec", `{"comm_id":"unused","target_name":"jupyter.widget","data":{"state":{"_model_name":"IntTextModel"}}}`},
		{"comm_msg", "exec", `{"comm_id":"o1","data":{"method":"update","state":{"msg_id":"exec"}}}`},
		{"stream", "exec", `{"name":"stdout","text":"x=1\n"}`},
		{"comm_msg", "exec", `{"comm_id":"o1","data":{"method":"update","state":{"msg_id":""}}}`},
		{"display_data", "exec", boxView},
	})
	if got := outputsJSON(t, r); !strings.Contains(got, `"model_id":"b1"`) || strings.Contains(got, "x=1") {
		t.Fatalf("outputs %s: want the box's view, and x=1 in the Output widget only", got)
	}
	if r.Widgets == nil {
		t.Fatal("no widget state")
	}
	for _, id := range []string{"b1", "s1", "l1", "o1"} {
		if _, ok := r.Widgets.State[id]; !ok {
			t.Errorf("model %s (shown or referred to) not saved", id)
		}
	}
	if _, ok := r.Widgets.State["unused"]; ok {
		t.Error("a model no output shows was saved")
	}
	if got := string(r.Widgets.State["o1"].State["outputs"]); !strings.Contains(got, "x=1") {
		t.Errorf("Output widget's outputs %s lack what it captured", got)
	}
	if w := r.Widgets.State["s1"]; w.ModelName != "IntSliderModel" || w.ModelModuleVersion != "1.0.0" {
		t.Errorf("slider saved as %+v", w)
	}

	// The reader moves the slider; the interact's new output replaces the old.
	c.Client("comm_msg", []byte(`{"comm_id":"s1","data":{"method":"update","state":{"value":7}}}`))
	c.Kernel("comm_msg", "change", []byte(`{"comm_id":"o1","data":{"method":"update","state":{"msg_id":"change"}}}`))
	c.Kernel("clear_output", "change", []byte(`{"wait":true}`))
	c.Kernel("stream", "change", []byte(`{"name":"stdout","text":"x=7\n"}`))
	shared, ok := c.Last("interact")
	if !ok {
		t.Fatal("Last has no result for the code that ran last")
	}
	if got := string(shared.Widgets.State["s1"].State["value"]); got != "7" {
		t.Errorf("shared slider value %s, want 7", got)
	}
	if got := string(shared.Widgets.State["o1"].State["outputs"]); !strings.Contains(got, "x=7") || strings.Contains(got, "x=1") {
		t.Errorf("shared Output widget shows %s, want x=7 only", got)
	}
	if _, ok := c.Last("other code"); ok {
		t.Error("Last answered for code that did not run last")
	}

	c.Kernel("comm_close", "", []byte(`{"comm_id":"s1"}`))
	if shared, _ := c.Last("interact"); shared.Widgets.State["s1"].ModelName != "" {
		t.Error("a closed model is still saved")
	}
}

func TestBufferStateIsLeftOut(t *testing.T) {
	c := NewCapture(0, false)
	r := finish(t, c, "img", [][3]string{
		{"comm_open", "exec", `{"comm_id":"i1","target_name":"jupyter.widget","data":{"state":{"_model_name":"ImageModel","format":"png","value":{}},"buffer_paths":[["value"]]}}`},
		{"display_data", "exec", `{"data":{"application/vnd.jupyter.widget-view+json":{"model_id":"i1"}},"metadata":{}}`},
	})
	state := r.Widgets.State["i1"].State
	if _, ok := state["value"]; ok {
		t.Error("a buffer-backed key was saved")
	}
	if string(state["format"]) != `"png"` {
		t.Errorf("format %s", state["format"])
	}
}

func TestWidgetStateIsBounded(t *testing.T) {
	c := NewCapture(2000, false)
	big := strings.Repeat("x", 1500)
	c.Kernel("comm_open", "", []byte(`{"comm_id":"a","target_name":"jupyter.widget","data":{"state":{"_model_name":"HTMLModel","value":"`+big+`"}}}`))
	c.Kernel("comm_open", "", []byte(`{"comm_id":"b","target_name":"jupyter.widget","data":{"state":{"_model_name":"HTMLModel","value":"`+big+`"}}}`))
	if c.widgetBytes > 2000 {
		t.Fatalf("widget state holds %d bytes, budget 2000", c.widgetBytes)
	}
	c.Kernel("comm_close", "", []byte(`{"comm_id":"a"}`))
	c.Kernel("comm_close", "", []byte(`{"comm_id":"b"}`))
	if c.widgetBytes != 0 {
		t.Fatalf("%d widget bytes left after every model closed", c.widgetBytes)
	}
}

func TestRunsAreBounded(t *testing.T) {
	c := NewCapture(0, false)
	for i := 0; i < maxRuns; i++ {
		if !c.Begin(string(rune('A'+i%26))+strings.Repeat("x", i), "", nil) {
			t.Fatalf("Begin %d refused", i)
		}
	}
	if c.Begin("one more", "", nil) {
		t.Fatal("Begin beyond maxRuns accepted")
	}
}

// FuzzKernel feeds arbitrary message bodies: the capture must neither
// panic nor keep more than its budget.
func FuzzKernel(f *testing.F) {
	for _, s := range []string{sliderOpen, outputOpen, boxOpen, boxView, `{"name":"stdout","text":"x"}`, `{"wait":true}`, `{"comm_id":"o1","data":{"method":"update","state":{"msg_id":"exec"}}}`} {
		f.Add("comm_open", s)
		f.Add("display_data", s)
		f.Add("stream", s)
	}
	types := []string{"stream", "display_data", "execute_result", "error", "clear_output", "update_display_data", "comm_open", "comm_msg", "comm_close"}
	f.Fuzz(func(t *testing.T, msgType, content string) {
		c := NewCapture(4096, false)
		var got Result
		c.Begin("exec", "code", func(r Result) { got = r })
		for _, ty := range append(types, msgType) {
			c.Kernel(ty, "exec", []byte(content))
		}
		c.Client("comm_msg", []byte(content))
		c.Kernel("status", "exec", []byte(`{"execution_state":"idle"}`))
		if _, err := json.Marshal(got); err != nil {
			t.Fatalf("result does not marshal: %v", err)
		}
		if c.widgetBytes > 4096 || c.widgetBytes < 0 {
			t.Fatalf("widget bytes %d", c.widgetBytes)
		}
	})
}

// ipywidgets 6 (Debian's) opens a comm with the state as its data, and the
// page updates it with "backbone" messages.
func TestOldWidgetProtocol(t *testing.T) {
	c := NewCapture(0, false)
	r := finish(t, c, "old", [][3]string{
		{"comm_open", "exec", `{"comm_id":"s1","target_name":"jupyter.widget","data":{"_model_name":"IntSliderModel","_model_module":"jupyter-js-widgets","value":3}}`},
		{"display_data", "exec", `{"data":{"application/vnd.jupyter.widget-view+json":{"model_id":"s1"}},"metadata":{}}`},
	})
	if got := string(r.Widgets.State["s1"].State["value"]); got != "3" {
		t.Fatalf("value %s", got)
	}
	c.Client("comm_msg", []byte(`{"comm_id":"s1","data":{"method":"backbone","sync_data":{"value":7},"buffer_keys":[]}}`))
	c.Kernel("comm_msg", "", []byte(`{"comm_id":"s1","data":{"method":"update","state":{"max":20},"buffers":[]}}`))
	shared, _ := c.Last("old")
	if s := shared.Widgets.State["s1"].State; string(s["value"]) != "7" || string(s["max"]) != "20" {
		t.Fatalf("state after both sides' updates: %s", s)
	}
}

// Large images are kept apart from the inline budget (they are stored as
// files), within ImageBudget; without that, they count like the rest.
func TestLargeImagesKeptApart(t *testing.T) {
	png := strings.Repeat("A", 200<<10) // 200 KiB of base64
	image := `{"data":{"image/png":"` + png + `","text/plain":"<Figure>"},"metadata":{}}`
	apart := NewCapture(100<<10, true)
	r := finish(t, apart, "plot", [][3]string{{"display_data", "exec", image}, {"display_data", "exec", image}})
	if r.Truncated || len(r.Outputs) != 2 {
		t.Fatalf("with images apart: truncated %v, %d outputs; want both images kept", r.Truncated, len(r.Outputs))
	}
	if imgs := r.Outputs[0].LargeImages(); len(imgs["image/png"]) != len(png) || len(imgs) != 1 {
		t.Fatalf("LargeImages %d types", len(imgs))
	}
	inline := NewCapture(100<<10, false)
	if r := finish(t, inline, "plot", [][3]string{{"display_data", "exec", image}}); !r.Truncated {
		t.Fatal("an image over the inline budget was kept inline")
	}
	many := make([][3]string, 0, 100)
	for range 100 {
		many = append(many, [3]string{"display_data", "exec", image})
	}
	if r := finish(t, NewCapture(0, true), "plots", many); !r.Truncated || len(r.Outputs) > ImageBudget/(200<<10)+1 {
		t.Fatalf("100 large images: truncated %v with %d outputs; ImageBudget holds %d", r.Truncated, len(r.Outputs), ImageBudget/(200<<10))
	}
}
