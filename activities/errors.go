package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	proxmox "github.com/luthermonson/go-proxmox"
	"go.temporal.io/sdk/temporal"

	"github.com/felhom/felhom-agent/internal/pveclient"
	"github.com/felhom/felhom-agent/internal/pveschema"
)

// Application error types returned by the activities. Workflows branch on
// these strings (temporal.ApplicationError.Type()); they are stable.
const (
	// Not retryable: retrying cannot help.
	ErrTypeBadRequest     = "ProxmoxBadRequest"     // 400 / 501 / invalid input
	ErrTypePermission     = "ProxmoxPermission"     // 401 / 403 / "Permission check failed"
	ErrTypeNotFound       = "ProxmoxNotFound"       // the guest (or volume) does not exist
	ErrTypeProtected      = "ProxmoxProtected"      // protection=1 refuses the step
	ErrTypeDigestMismatch = "ProxmoxDigestMismatch" // the config changed since it was read
	ErrTypeVMIDTaken      = "ProxmoxVMIDTaken"      // create: the VMID belongs to someone else
	ErrTypeTaskFailed     = "ProxmoxTaskFailed"     // the task ended with a failing exit status
	ErrTypeGuestRunning   = "ProxmoxGuestRunning"   // the step needs a stopped guest
	ErrTypeLedger         = "ProvenanceLedger"      // the host-local ledger failed
	ErrTypeMalformedUPID  = "ProxmoxMalformedUPID"  // a recorded UPID cannot be parsed
	ErrTypeWorkerStopping = "WorkerStopping"        // retryable: the worker stopped while a task ran
	ErrTypeVolumeInUse    = "ProxmoxVolumeInUse"    // the volume still belongs to an existing guest
	ErrTypeInterrupted    = "ProxmoxInterrupted"    // a lost task left the guest locked "create" or "destroyed": only root can clear it

	// Retryable: a later attempt may succeed.
	ErrTypeLocked      = "ProxmoxLocked"      // guest lock held / lock timeout
	ErrTypeTaskLost    = "ProxmoxTaskLost"    // the task ended without a status (the node went down under it)
	ErrTypeUnavailable = "ProxmoxUnavailable" // 5xx, 595/596, network errors, timeouts
	ErrTypeMalformed   = "ProxmoxMalformed"   // an answer go-proxmox or we could not parse
)

// TaskError is a Proxmox task that stopped with a failing exit status.
type TaskError struct {
	UPID       string
	ExitStatus string
}

func (e *TaskError) Error() string {
	return fmt.Sprintf("task %s failed: %s", e.UPID, e.ExitStatus)
}

// taskSucceeded reports whether exit is a successful exit status. Proxmox
// counts "WARNINGS: n" as success (go-proxmox does not).
func taskSucceeded(exit string) bool {
	return exit == "OK" || strings.HasPrefix(exit, "WARNINGS:")
}

// statusLine matches errors go-proxmox builds from a bare status line
// ("500 VM 101 is locked (backup)"), for clients not built by pveclient.
var statusLine = regexp.MustCompile(`^(\d{3}) (.*)$`)

// httpStatus extracts the HTTP status and Proxmox's message from err.
func httpStatus(err error) (int, string, bool) {
	var he *pveclient.HTTPError
	if errors.As(err, &he) {
		return he.StatusCode, he.Message, true
	}
	if errors.Is(err, proxmox.ErrNotAuthorized) {
		return 401, "not authorized", true
	}
	if m := statusLine.FindStringSubmatch(err.Error()); m != nil {
		code, _ := strconv.Atoi(m[1])
		return code, m[2], true
	}
	return 0, "", false
}

func contains(msg string, subs ...string) bool {
	l := strings.ToLower(msg)
	for _, s := range subs {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

func isMissingGuest(msg string) bool {
	return contains(msg, "does not exist", "no such vm", "no such ct", "no such guest", "not found")
}

func isLock(msg string) bool {
	return contains(msg, "is locked", "can't lock file", "lock timeout", "trying to acquire lock")
}

func isDigestMismatch(msg string) bool {
	return contains(msg, "checksum mismatch", "detected modified configuration")
}

// isLostTask reports an exit status pve gives a task whose log has no
// final status line: its worker died with the node (a reboot, a crash), so
// nothing says how far it got.
func isLostTask(exit string) bool {
	return exit == "unexpected status" || strings.HasPrefix(exit, "unable to get last line from task log")
}

// retryableTaskFailure reports a task that failed without deciding
// anything: it found the guest locked or could not get its config lock,
// or the node lost it. Such a task is nothing to resume; the next attempt
// reads the guest's state and sends the request again if it still must.
func retryableTaskFailure(err error) bool {
	var te *TaskError
	return errors.As(err, &te) && (isLock(te.ExitStatus) || isLostTask(te.ExitStatus))
}

func isAlreadyRunning(err error) bool {
	return err != nil && contains(err.Error(), "already running")
}

func isAlreadyExists(err error) bool {
	return err != nil && contains(err.Error(), "already exists")
}

// classify turns an error from a Proxmox call into the activity's error:
// a non-retryable application error where a retry cannot help, a retryable
// one otherwise. what names the step for the message ("start guest 101").
func classify(what string, err error) error {
	if err == nil {
		return nil
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		return err
	}
	if errors.Is(err, pveclient.ErrResponseTooLarge) {
		return temporal.NewApplicationErrorWithCause(what+": unusable answer from Proxmox: "+err.Error(), ErrTypeMalformed, err)
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) && urlErr.Timeout() {
		return temporal.NewApplicationErrorWithCause(what+": Proxmox did not answer in time: "+err.Error(), ErrTypeUnavailable, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err // the activity itself was cancelled or timed out
	}
	nonRetryable := func(typ, msg string) error {
		return temporal.NewNonRetryableApplicationError(what+": "+msg, typ, err)
	}
	retryable := func(typ, msg string) error {
		return temporal.NewApplicationErrorWithCause(what+": "+msg, typ, err)
	}

	var te *TaskError
	if errors.As(err, &te) {
		msg := "task " + te.UPID + " ended with " + strconv.Quote(te.ExitStatus)
		switch {
		case isLock(te.ExitStatus):
			return retryable(ErrTypeLocked, msg)
		case isLostTask(te.ExitStatus):
			return retryable(ErrTypeTaskLost, msg+": the node lost the task; the next attempt decides from the guest's state")
		case isDigestMismatch(te.ExitStatus):
			return nonRetryable(ErrTypeDigestMismatch, msg+": the configuration changed since it was read: read it again")
		case contains(te.ExitStatus, "protection mode enabled", "protected"):
			return nonRetryable(ErrTypeProtected, msg)
		case isMissingGuest(te.ExitStatus):
			return nonRetryable(ErrTypeNotFound, msg)
		case contains(te.ExitStatus, "is running", "not stopped"):
			return nonRetryable(ErrTypeGuestRunning, msg)
		}
		return nonRetryable(ErrTypeTaskFailed, msg)
	}

	if code, msg, ok := httpStatus(err); ok {
		switch {
		case code == 401 || code == 403 || contains(msg, "permission check failed"):
			return nonRetryable(ErrTypePermission, fmt.Sprintf("permission denied (%d %s): check the API token's privileges", code, msg))
		case code == 400 || code == 501:
			return nonRetryable(ErrTypeBadRequest, fmt.Sprintf("rejected by Proxmox (%d %s)", code, msg))
		case code == 404:
			return nonRetryable(ErrTypeNotFound, fmt.Sprintf("not found (%d %s)", code, msg))
		case code == 500 && isLock(msg):
			return retryable(ErrTypeLocked, fmt.Sprintf("guest is locked (%s)", msg))
		case code == 500 && contains(msg, "protection mode enabled", "is protected"):
			return nonRetryable(ErrTypeProtected, fmt.Sprintf("refused: %s", msg))
		case code == 500 && (isDigestMismatch(msg) || contains(msg, "digest")):
			return nonRetryable(ErrTypeDigestMismatch, fmt.Sprintf("the configuration changed since it was read (%s): read it again", msg))
		case code == 500 && isMissingGuest(msg):
			return nonRetryable(ErrTypeNotFound, fmt.Sprintf("does not exist (%s)", msg))
		case code == 500 && contains(msg, "already exists"):
			return nonRetryable(ErrTypeVMIDTaken, fmt.Sprintf("VMID already in use (%s)", msg))
		case code == 500 && contains(msg, "cannot remove image"):
			return nonRetryable(ErrTypeVolumeInUse, msg)
		case code == 500 && contains(msg, "is running", "not stopped"):
			return nonRetryable(ErrTypeGuestRunning, msg)
		case code >= 500 || code == 429 || code == 408:
			return retryable(ErrTypeUnavailable, fmt.Sprintf("Proxmox answered %d %s", code, msg))
		}
		return nonRetryable(ErrTypeBadRequest, fmt.Sprintf("Proxmox answered %d %s", code, msg))
	}

	var netErr net.Error
	switch {
	case errors.As(err, &netErr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED):
		return retryable(ErrTypeUnavailable, "cannot reach Proxmox: "+err.Error())
	case contains(err.Error(), "unexpected end of json input", "invalid character", "cannot unmarshal"):
		return retryable(ErrTypeMalformed, "unreadable answer from Proxmox: "+err.Error())
	}
	return retryable(ErrTypeUnavailable, err.Error())
}

// malformed is a retryable error about an answer from Proxmox that cannot be
// used (a null where data was due, a UPID that does not parse).
func malformed(format string, args ...any) error {
	return temporal.NewApplicationError("unusable answer from Proxmox: "+fmt.Sprintf(format, args...), ErrTypeMalformed)
}

// checkValues refuses, before anything is sent, config values Proxmox's
// schema would refuse (pveschema), naming each key: a non-retryable
// ProxmoxBadRequest.
func checkValues(what, kind string, params map[string]any) error {
	values := make(map[string]string, len(params))
	for k, v := range params {
		values[k] = configString(v)
	}
	if msgs := pveschema.CheckAll(kind, values); msgs != nil {
		return badInput(what, "Proxmox would refuse %s", strings.ReplaceAll(strings.Join(pveschema.Problems(msgs), "; "), "\n", "; "))
	}
	return nil
}

// badInput is a non-retryable error about the activity's own input.
func badInput(what, format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(what+": "+fmt.Sprintf(format, args...), ErrTypeBadRequest, nil)
}

// recoverPanic turns a panic inside go-proxmox (it indexes UPID fields and
// dereferences "data": null answers without checks) into a retryable error,
// so a malformed answer fails one attempt instead of the worker.
func recoverPanic(what string, err *error) {
	if r := recover(); r != nil {
		*err = temporal.NewApplicationError(fmt.Sprintf("%s: malformed answer from Proxmox (client panicked: %v)", what, r), ErrTypeMalformed)
	}
}

func notFound(what string, vmid int) error {
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("%s: guest %d does not exist on this node", what, vmid), ErrTypeNotFound, nil)
}

func isNonRetryable(err error) bool {
	var ae *temporal.ApplicationError
	return errors.As(err, &ae) && ae.NonRetryable()
}
