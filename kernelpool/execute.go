package kernelpool

import (
	"context"
	"errors"
	"fmt"

	"github.com/cellgate/cellgate/jupytermsg"
)

// ErrNoIdle is wrapped by Execute's error when the execute_reply arrived but
// the status: idle after it did not before ctx ended.
var ErrNoIdle = errors.New("execute_reply arrived but status: idle never did")

// Execute runs code on k and returns the execute_reply once the kernel is
// idle again, so all output has been seen. onMessage (may be nil) gets
// every message the request caused. The caller must be the only reader of
// k.Messages(); messages of other requests are discarded.
//
// The idle comes on iopub, where the kernel drops messages for a reader
// that falls behind, so it may never come: only ctx bounds the wait. Give
// ctx a deadline. If it ends after the reply came, Execute returns the
// reply with an error wrapping ErrNoIdle and ctx's error.
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
				idle = isIdle(r.Msg)
			}
		case <-k.Done():
			return nil, fmt.Errorf("execute: %w", k.Err())
		case <-ctx.Done():
			if reply != nil {
				return reply, fmt.Errorf("execute: %w: %w", ErrNoIdle, ctx.Err())
			}
			return nil, fmt.Errorf("execute: %w", ctx.Err())
		}
	}
	return reply, nil
}
