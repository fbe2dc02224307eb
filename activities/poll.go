package activities

import "time"

// How a running Proxmox task is polled. Most tasks a guest step starts end
// within a few seconds, and the step's time is the task's plus the time
// from its end to the poll that sees it. A fixed one-second interval adds
// half a second to every task on average, which for one- to three-second
// tasks is a quarter of the work. So a wait polls at once (a task that ends
// at once costs one poll), then at a twelfth of the time waited so far,
// between MinPollInterval and the step's maximum (Proxmox.PollInterval, a
// second by default): a poll comes at most a twelfth of the task's
// duration after its end, and a long task is polled once per maximum
// interval, as before. A three-second task is polled about 33 times, a
// minute-long one about 99. At a quarter (18 and 75 polls) a guest's two
// tasks came out up to 1.24 times their length, at an eighth (26 and 87)
// up to 1.12 times, which left the guest workflow less than 3% of the
// time its tasks take for its own work.

// MinPollInterval is the shortest time between two polls of one task.
const MinPollInterval = 50 * time.Millisecond

// NextPoll is how long to wait before the next poll of a task that has
// been waited on for waited and still runs, with polls at most max apart
// (DefaultPollInterval when max is zero or less). The direct reference loop
// of the benchmark polls with it too.
func NextPoll(waited, max time.Duration) time.Duration {
	if max <= 0 {
		max = DefaultPollInterval
	}
	d := waited / 12
	if d < MinPollInterval {
		d = MinPollInterval
	}
	if d > max {
		d = max
	}
	return d
}
