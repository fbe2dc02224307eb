package worker

import (
	"testing"

	"github.com/felhom/felhom-agent/activities"
)

// A heartbeat that records a Proxmox task's UPID waits out the SDK's
// throttle interval after the heartbeat before it, so that it is sent at
// once and not from the SDK's batch, after the task's first poll.
func TestHeartbeatThrottleIsWithinTheActivitiesBatchWindow(t *testing.T) {
	if HeartbeatThrottle >= activities.HeartbeatBatchWindow {
		t.Fatalf("HeartbeatThrottle %s is not below activities.HeartbeatBatchWindow %s", HeartbeatThrottle, activities.HeartbeatBatchWindow)
	}
}
