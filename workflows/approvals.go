package workflows

// approvalQueue holds the approvals that arrived for the pending action,
// oldest first. Each is answered exactly once: with the host's verdict when
// it was tried, or as superseded when the wait ended without trying it. An
// approval sent by Update has a caller waiting for that answer; one sent by
// Signal has none.
type approvalQueue struct {
	reqs []*approvalRequest
}

type approvalRequest struct {
	approval Approval
	verdict  ApprovalVerdict
	answered bool
}

// push queues an approval and returns its request, to wait on.
func (q *approvalQueue) push(a Approval) *approvalRequest {
	req := &approvalRequest{approval: a}
	q.reqs = append(q.reqs, req)
	return req
}

// pop takes the oldest approval off the queue; the caller answers it.
func (q *approvalQueue) pop() *approvalRequest {
	req := q.reqs[0]
	q.reqs = q.reqs[1:]
	return req
}

func (q *approvalQueue) len() int { return len(q.reqs) }

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
