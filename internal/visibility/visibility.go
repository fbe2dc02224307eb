// Package visibility names the custom search attributes that felhom-agent's
// workflows upsert, so that operators can find guests and pending approvals in
// the Temporal Web UI and with `temporal workflow list --query`.
//
// The embedded server registers exactly these; a production cluster registers
// them with `temporal operator search-attribute create` (see docker-compose.yml).
package visibility

import (
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
)

// Names of the custom search attributes.
const (
	Host             = "FelhomHost"
	Guest            = "FelhomGuest"
	Phase            = "FelhomPhase"
	PendingSignature = "FelhomPendingSignature"
)

// Typed keys for workflow.UpsertTypedSearchAttributes.
var (
	HostKey             = temporal.NewSearchAttributeKeyKeyword(Host)
	GuestKey            = temporal.NewSearchAttributeKeyKeyword(Guest)
	PhaseKey            = temporal.NewSearchAttributeKeyKeyword(Phase)
	PendingSignatureKey = temporal.NewSearchAttributeKeyBool(PendingSignature)
)

// PendingApprovalsQuery is the visibility query that lists every workflow
// waiting for an operator's signature. It is ready to be saved as a view in
// the Web UI. A terminated workflow keeps its last search attributes, so
// only running ones count.
const PendingApprovalsQuery = PendingSignature + " = true AND ExecutionStatus = 'Running'"

// SearchAttributes returns the custom search attributes with their types, as
// the server must register them. SQLite visibility has few slots per type
// (3 Bool, 10 Keyword), so this list is kept short on purpose.
func SearchAttributes() map[string]enumspb.IndexedValueType {
	return map[string]enumspb.IndexedValueType{
		Host:             enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		Guest:            enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		Phase:            enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		PendingSignature: enumspb.INDEXED_VALUE_TYPE_BOOL,
	}
}
