-- Argo CD health check for cache.openedx.org/EdxRemoteCache (installed by argocd-cm-patch.yaml).
--
-- Argo CD runs custom health scripts with only the base, table and a cut-down os library (no string,
-- no math), so this script compares fields and never parses text: it does not read timestamps. The grace
-- period before "Degraded" comes from the operator itself, which keeps Reconciling=True while it is still
-- working (progressing, waiting, healing). Ready=False with Reconciling=False is a settled failure.
--
--   Progressing  no status yet; metadata.generation not observed yet; Reconciling=True; being deleted
--   Degraded     Stalled=True (a human must act); Ready=False once the operator stopped working on it
--   Suspended    paused (spec.paused, or the edx-remote-cache.openedx.org/paused annotation) and Ready=True
--   Healthy      Ready=True for the current generation
local hs = {}

local function find(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

-- a condition's message (the operator's messages already name the cause), else its reason
local function describe(condition)
  if condition == nil then
    return ""
  end
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition.reason ~= nil then
    return condition.reason
  end
  return ""
end

local metadata = obj.metadata or {}
local spec = obj.spec or {}
local status = obj.status
local annotations = metadata.annotations or {}
-- the operator pauses for either; it reads the annotation case-insensitively (no string library here)
local pause_annotation = annotations["edx-remote-cache.openedx.org/paused"]
local paused = spec.paused == true
  or pause_annotation == "true" or pause_annotation == "True" or pause_annotation == "TRUE"

if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: the operator is cleaning up (spec.deletionPolicy decides what happens in AWS)"
  return hs
end

if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the edx-remote-cache operator to report status"
  return hs
end

local generation = tonumber(metadata.generation)
local observed = tonumber(status.observedGeneration)
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  if observed ~= nil then
    hs.message = hs.message .. " (status is for generation " .. observed .. ")"
  end
  return hs
end

local ready = find(status.conditions, "Ready")
local reconciling = find(status.conditions, "Reconciling")
local stalled = find(status.conditions, "Stalled")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = "Stalled: " .. describe(stalled)
  return hs
end

if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  local detail = describe(ready)
  if ready ~= nil and ready.status ~= "True" and detail ~= "" and detail ~= hs.message then
    hs.message = hs.message .. "; " .. detail
  end
  return hs
end

if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if generation ~= nil and ready.observedGeneration ~= nil and tonumber(ready.observedGeneration) ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition of generation " .. generation
  return hs
end

if ready.status == "True" then
  if paused then
    hs.status = "Suspended"
    hs.message = "Paused: " .. describe(ready)
    return hs
  end
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Degraded"
hs.message = describe(ready)
return hs
