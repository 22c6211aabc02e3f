package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
)

// frame is a message as a Sage-cell or legacy Jupyter websocket client
// (or a long-poll answer) carries it.
type frame struct {
	Seq          uint64 `json:"seq"`
	Channel      string `json:"channel"`
	Header       header `json:"header"`
	ParentHeader header `json:"parent_header"`
	Content      struct {
		ExecutionState string `json:"execution_state"`
		Status         string `json:"status"`
		Text           string `json:"text"`
		Name           string `json:"name"`
		Files          []struct {
			Name string `json:"name"`
			URL  string `json:"url"`
			Size int64  `json:"size"`
		} `json:"files"`
	} `json:"content"`
	Metadata struct {
		Cellgate struct {
			Permalink string `json:"permalink"`
		} `json:"cellgate"`
	} `json:"metadata"`
	Error   string `json:"error"`
	Message string `json:"message"`

	at time.Time // when the client read it
}

type header struct {
	MsgID   string `json:"msg_id"`
	MsgType string `json:"msg_type"`
}

// client is what the bench needs of a connection to a kernel session:
// send a shell message and receive frames.
type client interface {
	sendShell(msgType, msgID string, content any) error
	frames() <-chan frame
	close()
}

// executeTiming is one execution as a client saw it.
type executeTiming struct {
	reply, idle time.Duration // from send until the execute_reply / the idle status
	busy        time.Duration // until the busy status
	replyAt     time.Time
	filesAt     time.Duration // until a cellgate.files message (0 if none)
	files       []frame
	status      string
	stdout      string
	permalink   string // the id its execute_reply carries
}

// execute sends an execute_request and waits for its reply and idle
// status (and, with waitFiles, its cellgate.files message).
func execute(ctx context.Context, c client, code string, waitFiles bool) (executeTiming, error) {
	id := uuid.NewString()
	content := map[string]any{"code": code, "silent": false, "store_history": true,
		"user_expressions": map[string]any{}, "allow_stdin": false, "stop_on_error": true}
	var t executeTiming
	start := time.Now()
	if err := c.sendShell("execute_request", id, content); err != nil {
		return t, err
	}
	gotReply, gotIdle := false, false
	for !gotReply || !gotIdle || (waitFiles && t.filesAt == 0) {
		select {
		case f, ok := <-c.frames():
			if !ok {
				return t, errors.New("connection closed during execution")
			}
			if f.Error != "" {
				return t, fmt.Errorf("gateway error: %s: %s", f.Error, f.Message)
			}
			if f.ParentHeader.MsgID != id {
				continue
			}
			switch f.Header.MsgType {
			case "execute_reply":
				gotReply, t.reply, t.status, t.replyAt = true, f.at.Sub(start), f.Content.Status, f.at
				t.permalink = f.Metadata.Cellgate.Permalink
			case "status":
				if f.Content.ExecutionState == "busy" && t.busy == 0 {
					t.busy = f.at.Sub(start)
				}
				if f.Content.ExecutionState == "idle" {
					gotIdle, t.idle = true, f.at.Sub(start)
				}
				if f.Content.ExecutionState == "dead" {
					return t, errors.New("kernel is dead")
				}
			case "stream":
				if f.Content.Name == "stdout" {
					t.stdout += f.Content.Text
				}
			case "cellgate.files":
				t.filesAt = f.at.Sub(start)
				t.files = append(t.files, f)
			}
		case <-ctx.Done():
			return t, fmt.Errorf("execute %q: %w", code, ctx.Err())
		}
	}
	if t.status != "ok" {
		return t, fmt.Errorf("execute %q: reply status %q", code, t.status)
	}
	return t, nil
}

// --- websocket (Sage-cell channels and the Jupyter API's legacy encoding) ---

type wsClient struct {
	conn    *websocket.Conn
	session string
	in      chan frame
	done    chan struct{}
	mu      sync.Mutex
}

func dialWS(ctx context.Context, u string, h http.Header) (*wsClient, error) {
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	conn, resp, err := d.DialContext(ctx, u, h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %d)", u, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial %s: %w", u, err)
	}
	q, _ := url.Parse(u)
	c := &wsClient{conn: conn, session: q.Query().Get("session_id"), in: make(chan frame, 4096), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *wsClient) read() {
	defer close(c.in)
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		var f frame
		if json.Unmarshal(data, &f) != nil {
			continue
		}
		f.at = time.Now()
		select {
		case c.in <- f:
		case <-c.done:
			return
		}
	}
}

func (c *wsClient) frames() <-chan frame { return c.in }

func (c *wsClient) sendShell(msgType, msgID string, content any) error {
	data, err := json.Marshal(map[string]any{
		"channel": "shell",
		"header": map[string]string{"msg_id": msgID, "msg_type": msgType, "session": c.session,
			"username": "cellbench", "version": "5.3", "date": time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": content, "buffers": []any{},
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	return c.conn.WriteMessage(websocket.TextMessage, data)
}

func (c *wsClient) close() {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	c.mu.Lock()
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.mu.Unlock()
	_ = c.conn.Close()
}

// --- long-polling ---

type pollClient struct {
	http    *http.Client
	base    string // http://host/kernel/ID/poll
	client  string
	in      chan frame
	cancel  context.CancelFunc
	stopped chan struct{}
	errMu   sync.Mutex
	err     error
}

// startPoll runs a long-poll receive loop, as a client whose network
// blocks websockets keeps one open all the time.
func startPoll(hc *http.Client, serverBase, kernelID string) *pollClient {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pollClient{http: hc, base: serverBase + "kernel/" + kernelID + "/poll", client: uuid.NewString(),
		in: make(chan frame, 4096), cancel: cancel, stopped: make(chan struct{})}
	go p.loop(ctx)
	return p
}

func (p *pollClient) loop(ctx context.Context) {
	defer close(p.stopped)
	defer close(p.in)
	since := uint64(0)
	for ctx.Err() == nil {
		u := p.base + "?client=" + p.client + "&since=" + strconv.FormatUint(since, 10) + "&wait=20"
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := p.http.Do(req)
		if err != nil {
			p.setErr(err)
			return
		}
		var body struct {
			Messages []json.RawMessage `json:"messages"`
			Next     uint64            `json:"next"`
			Ended    bool              `json:"ended"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		now := time.Now()
		if err != nil || resp.StatusCode != http.StatusOK {
			p.setErr(fmt.Errorf("poll: HTTP %d: %v", resp.StatusCode, err))
			return
		}
		for _, raw := range body.Messages {
			var f frame
			if json.Unmarshal(raw, &f) == nil {
				f.at = now
				select {
				case p.in <- f:
				case <-ctx.Done():
					return
				}
			}
		}
		since = body.Next
		if body.Ended {
			return
		}
	}
}

func (p *pollClient) setErr(err error) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// failure is why the receive loop stopped early, if it did.
func (p *pollClient) failure() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

func (p *pollClient) frames() <-chan frame { return p.in }

func (p *pollClient) sendShell(msgType, msgID string, content any) error {
	data, err := json.Marshal(map[string]any{
		"channel":       "shell",
		"header":        map[string]string{"msg_id": msgID, "msg_type": msgType, "session": p.client},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": content,
	})
	if err != nil {
		return err
	}
	resp, err := p.http.Post(p.base+"?client="+p.client, "application/json", bytes.NewReader(data))
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("poll send: HTTP %d: %s", resp.StatusCode, body)
	}
	return nil
}

func (p *pollClient) close() {
	p.cancel()
	<-p.stopped
}

// --- HTTP helpers for the Sage-cell API ---

// api talks to one cellgate.
type api struct {
	base  string // http://127.0.0.1:PORT/
	token string
	http  *http.Client
}

func newHTTPClient() *http.Client {
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
	return &http.Client{Transport: tr, Timeout: 120 * time.Second}
}

// kernelAnswer is POST /kernel's answer.
type kernelAnswer struct {
	ID      string `json:"id"`
	WSURL   string `json:"ws_url"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

// newKernel is POST /kernel. from, when set, is sent as X-Forwarded-For
// (the bench server trusts the proxy header): the per-address cap is
// meant for distinct readers, and the bench plays many readers.
func (a *api) newKernel(ctx context.Context, form url.Values, from string) (kernelAnswer, int, error) {
	if !form.Has("kernel_name") {
		// The figures are python3's, whatever kernel the Sage-cell routes
		// default to (SageMath when it is installed).
		form = cloneValues(form)
		form.Set("kernel_name", "python3")
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"kernel", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if from != "" {
		req.Header.Set("X-Forwarded-For", from)
	}
	var k kernelAnswer
	resp, err := a.http.Do(req)
	if err != nil {
		return k, 0, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &k); err != nil {
		return k, resp.StatusCode, fmt.Errorf("POST /kernel: HTTP %d: %.200s", resp.StatusCode, data)
	}
	if resp.StatusCode != http.StatusOK || k.ID == "" {
		return k, resp.StatusCode, fmt.Errorf("POST /kernel: HTTP %d: %s %s", resp.StatusCode, k.Error, k.Message)
	}
	return k, resp.StatusCode, nil
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

func (a *api) deleteKernel(id string) error {
	req, _ := http.NewRequest(http.MethodDelete, a.base+"kernel/"+id, nil)
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("DELETE /kernel/%s: HTTP %d", id, resp.StatusCode)
	}
	return nil
}

// sageChannels opens the Sage-cell websocket of a session.
func sageChannels(ctx context.Context, k kernelAnswer) (*wsClient, error) {
	return dialWS(ctx, k.WSURL+"kernel/"+k.ID+"/channels?session_id="+uuid.NewString(), nil)
}

func (a *api) readyz() (readyzState, error) {
	var st readyzState
	_, err := getJSON(a.http, a.base+"readyz", nil, &st)
	return st, err
}

// waitPoolFull waits until every pool holds all its ready kernels.
func (a *api) waitPoolFull(timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < timeout {
		if st, err := a.readyz(); err == nil && st.full() {
			return time.Since(start), nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start), fmt.Errorf("pool not full after %s", timeout)
}

// jupyterKernel starts a kernel through the Jupyter Server API and opens
// its websocket with the legacy JSON encoding.
func (a *api) jupyterKernel(ctx context.Context) (string, *wsClient, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"api/kernels", strings.NewReader(`{"name":"python3"}`))
	req.Header.Set("Authorization", "token "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return "", nil, err
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var model struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(data, &model); err != nil || resp.StatusCode != http.StatusCreated {
		return "", nil, fmt.Errorf("POST /api/kernels: HTTP %d: %.200s", resp.StatusCode, data)
	}
	u := "ws" + strings.TrimPrefix(a.base, "http") + "api/kernels/" + model.ID + "/channels?session_id=" + uuid.NewString()
	ws, err := dialWS(ctx, u, http.Header{"Authorization": {"token " + a.token}})
	if err != nil {
		return model.ID, nil, err
	}
	return model.ID, ws, nil
}

func (a *api) deleteJupyterKernel(id string) error {
	req, _ := http.NewRequest(http.MethodDelete, a.base+"api/kernels/"+id, nil)
	req.Header.Set("Authorization", "token "+a.token)
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("DELETE /api/kernels/%s: HTTP %d", id, resp.StatusCode)
	}
	return nil
}

// waitPermalinkQueueEmpty waits until cellgate's metrics show no permalink
// waiting for the database.
func (a *api) waitPermalinkQueueEmpty(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		depth, err := a.metric("cellgate_permalink_queue_depth")
		if err == nil && depth == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("permalink queue not empty after %s (depth %v, %v)", timeout, depth, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metric reads one unlabelled gauge or counter from /metrics.
func (a *api) metric(name string) (float64, error) {
	resp, err := a.http.Get(a.base + "metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s not in /metrics", name)
}
