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
	reply, _, err := awaitReplyAndIdle(ctx, k.Messages(), k.Done(), req.Header.MsgID, 0, 0, onMessage)
	switch {
	case errors.Is(err, errProcessEnded):
		return nil, fmt.Errorf("execute: %w", k.Err())
	case err != nil && reply != nil:
		return reply, fmt.Errorf("execute: %w: %w", ErrNoIdle, err)
	case err != nil:
		return nil, fmt.Errorf("execute: %w", err)
	}
	return reply, nil
}
