package kernelpool

import (
	"context"
	"fmt"

	"github.com/cellgate/cellgate/jupytermsg"
)

// Execute runs code on k and returns the execute_reply once the kernel is
// idle again, so all output has been seen. onMessage (may be nil) gets
// every message the request caused. The caller must be the only reader of
// k.Messages(); messages of other requests are discarded.
func Execute(ctx context.Context, k *Kernel, code string, onMessage func(Received)) (*jupytermsg.Message, error) {
	req, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{
		Code: code, StoreHistory: true, UserExpressions: map[string]string{}, StopOnError: true,
	})
	if err != nil {
		return nil, err
	}
	if err := k.Send(jupytermsg.Shell, req); err != nil {
		return nil, err
	}
	var reply *jupytermsg.Message
	idle := false
	for reply == nil || !idle {
		select {
		case r := <-k.Messages():
			if r.Msg.ParentMsgID() != req.Header.MsgID {
				continue
			}
			if onMessage != nil {
				onMessage(r)
			}
			switch {
			case r.Msg.Header.MsgType == "execute_reply":
				reply = r.Msg
			case r.Msg.Header.MsgType == "status":
				var st jupytermsg.Status
				idle = r.Msg.DecodeContent(&st) == nil && st.ExecutionState == jupytermsg.StateIdle
			}
		case <-k.Done():
			return nil, fmt.Errorf("execute: %w", k.Err())
		case <-ctx.Done():
			return nil, fmt.Errorf("execute: %w", ctx.Err())
		}
	}
	return reply, nil
}
