package historyfacts

import (
	"testing"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
)

func started(id string) *historypb.HistoryEvent {
	return &historypb.HistoryEvent{EventType: enumspb.EVENT_TYPE_TIMER_STARTED,
		Attributes: &historypb.HistoryEvent_TimerStartedEventAttributes{TimerStartedEventAttributes: &historypb.TimerStartedEventAttributes{TimerId: id}}}
}

func fired(id string) *historypb.HistoryEvent {
	return &historypb.HistoryEvent{EventType: enumspb.EVENT_TYPE_TIMER_FIRED,
		Attributes: &historypb.HistoryEvent_TimerFiredEventAttributes{TimerFiredEventAttributes: &historypb.TimerFiredEventAttributes{TimerId: id}}}
}

func canceled(id string) *historypb.HistoryEvent {
	return &historypb.HistoryEvent{EventType: enumspb.EVENT_TYPE_TIMER_CANCELED,
		Attributes: &historypb.HistoryEvent_TimerCanceledEventAttributes{TimerCanceledEventAttributes: &historypb.TimerCanceledEventAttributes{TimerId: id}}}
}

func TestOpenTimers(t *testing.T) {
	for _, tt := range []struct {
		name string
		evs  []*historypb.HistoryEvent
		want int
	}{
		{"none", nil, 0},
		{"started", []*historypb.HistoryEvent{started("1")}, 1},
		{"fired", []*historypb.HistoryEvent{started("1"), fired("1")}, 0},
		{"cancelled", []*historypb.HistoryEvent{started("1"), canceled("1")}, 0},
		{"one of three left", []*historypb.HistoryEvent{started("1"), started("2"), canceled("1"), started("3"), fired("3")}, 1},
		{"an end of a timer not in the history", []*historypb.HistoryEvent{fired("9"), started("1")}, 1},
	} {
		if got := OpenTimers(tt.evs); got != tt.want {
			t.Errorf("%s: OpenTimers = %d, want %d", tt.name, got, tt.want)
		}
	}
}
