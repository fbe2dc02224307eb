package workflows

// fifo holds requests that handlers queued for the workflow's loop, oldest
// first; each handler keeps its request and waits until the loop answered it.
type fifo[T any] struct {
	reqs []*T
}

// push queues req and returns it, to wait on.
func (q *fifo[T]) push(req *T) *T {
	q.reqs = append(q.reqs, req)
	return req
}

// pop takes the oldest request off the queue; the caller answers it.
func (q *fifo[T]) pop() *T {
	req := q.reqs[0]
	q.reqs = q.reqs[1:]
	return req
}

func (q *fifo[T]) len() int { return len(q.reqs) }

// approvalQueue holds the approvals that arrived for the pending action,
// oldest first. Each is answered exactly once: with the host's verdict when
// it was tried, or as superseded when the wait ended without trying it. An
// approval sent by Update has a caller waiting for that answer; one sent by
// Signal has none.
type approvalQueue struct {
	fifo[approvalRequest]
}

type approvalRequest struct {
	approval Approval
	verdict  ApprovalVerdict
	answered bool
}

// answerAll answers every queued approval with v and empties the queue.
func (q *approvalQueue) answerAll(v ApprovalVerdict) {
	for _, req := range q.reqs {
		req.answer(v)
	}
	q.reqs = nil
}

func (r *approvalRequest) answer(v ApprovalVerdict) {
	r.verdict, r.answered = v, true
}

// superseded is the answer to approvals whose wait ended before they were
// tried.
func superseded(why string) ApprovalVerdict {
	return ApprovalVerdict{Code: "superseded", Detail: "the action is no longer pending: " + why}
}
