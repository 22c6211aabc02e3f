package jupytermsg

import "encoding/json"

// Typed content of the common messages (messaging spec 5.3). Fields the
// gateway does not interpret stay in json.RawMessage.

// ExecuteRequest is the content of execute_request.
type ExecuteRequest struct {
	Code            string            `json:"code"`
	Silent          bool              `json:"silent"`
	StoreHistory    bool              `json:"store_history"`
	UserExpressions map[string]string `json:"user_expressions"`
	AllowStdin      bool              `json:"allow_stdin"`
	StopOnError     bool              `json:"stop_on_error"`
}

// ExecuteReply is the content of execute_reply.
type ExecuteReply struct {
	Status          string                     `json:"status"`
	ExecutionCount  int                        `json:"execution_count"`
	UserExpressions map[string]json.RawMessage `json:"user_expressions,omitempty"`
	Payload         []json.RawMessage          `json:"payload,omitempty"`
	EName           string                     `json:"ename,omitempty"`
	EValue          string                     `json:"evalue,omitempty"`
	Traceback       []string                   `json:"traceback,omitempty"`
}

// Stream is the content of stream.
type Stream struct {
	Name string `json:"name"`
	Text string `json:"text"`
}

// Status is the content of status.
type Status struct {
	ExecutionState string `json:"execution_state"`
}

// The execution states a status message reports.
const (
	StateStarting = "starting"
	StateBusy     = "busy"
	StateIdle     = "idle"
	StateDead     = "dead"
)

// DisplayData is the content of display_data, update_display_data and
// (with ExecutionCount) execute_result.
type DisplayData struct {
	Data           map[string]json.RawMessage `json:"data"`
	Metadata       map[string]json.RawMessage `json:"metadata"`
	Transient      map[string]json.RawMessage `json:"transient,omitempty"`
	ExecutionCount *int                       `json:"execution_count,omitempty"`
}

// Error is the content of error.
type Error struct {
	EName     string   `json:"ename"`
	EValue    string   `json:"evalue"`
	Traceback []string `json:"traceback"`
}

// KernelInfoReply is the content of kernel_info_reply.
type KernelInfoReply struct {
	Status                string          `json:"status"`
	ProtocolVersion       string          `json:"protocol_version"`
	Implementation        string          `json:"implementation"`
	ImplementationVersion string          `json:"implementation_version"`
	LanguageInfo          json.RawMessage `json:"language_info"`
	Banner                string          `json:"banner"`
}

// ShutdownRequest is the content of shutdown_request (and reply).
type ShutdownRequest struct {
	Restart bool `json:"restart"`
}

// InputRequest is the content of input_request.
type InputRequest struct {
	Prompt   string `json:"prompt"`
	Password bool   `json:"password"`
}

// InputReply is the content of input_reply.
type InputReply struct {
	Value string `json:"value"`
}

// CommOpen is the content of comm_open.
type CommOpen struct {
	CommID     string          `json:"comm_id"`
	TargetName string          `json:"target_name"`
	Data       json.RawMessage `json:"data"`
}

// CommMsg is the content of comm_msg and comm_close.
type CommMsg struct {
	CommID string          `json:"comm_id"`
	Data   json.RawMessage `json:"data"`
}
