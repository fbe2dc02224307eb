// Package historyfacts reads facts out of a workflow's history events, for
// the checks of the tests and the chaos soak: what the server holds is
// what they judge, not what a workflow says of itself.
package historyfacts

import (
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
)

// OpenTimers counts the timers started in evs that neither fired nor were
// cancelled.
func OpenTimers(evs []*historypb.HistoryEvent) int {
	open := map[string]bool{}
	for _, e := range evs {
		switch e.GetEventType() {
		case enumspb.EVENT_TYPE_TIMER_STARTED:
			open[e.GetTimerStartedEventAttributes().GetTimerId()] = true
		case enumspb.EVENT_TYPE_TIMER_FIRED:
			delete(open, e.GetTimerFiredEventAttributes().GetTimerId())
		case enumspb.EVENT_TYPE_TIMER_CANCELED:
			delete(open, e.GetTimerCanceledEventAttributes().GetTimerId())
		}
	}
	return len(open)
}
