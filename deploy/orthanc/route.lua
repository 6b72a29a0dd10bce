-- Orthanc auto-routing rule for the ICH triage plugin (loaded with "LuaScripts" in orthanc.json).
--
-- When a study becomes stable (no new instance for "StableAge" seconds), send its CT series that have new
-- instances to the plugin's DICOM modality. The plugin analyses the study and stores a Secondary Capture and an
-- SR back into the same study, which makes the study unstable and then stable again: this rule must not route
-- the study again for that.
--
-- Loop guard: series whose Manufacturer is the plugin's are never sent, and a series is sent again only when it
-- has gained instances since it was last sent. So when the only new instances of a study are ours, nothing is
-- routed. (The plugin has its own guard too: it drops objects with its Manufacturer and ignores re-sent copies.)
--
-- Settings: define these globals in a Lua script listed before this one to change them.
ICH_MODALITY = ICH_MODALITY or 'ICH_TRIAGE'                          -- key of the plugin in "DicomModalities"
ICH_PLUGIN_MANUFACTURER = ICH_PLUGIN_MANUFACTURER or 'ICH Triage Plugin (open source)'  -- dicom_io.result.PLUGIN_MANUFACTURER
ICH_ROUTED_MODALITIES = ICH_ROUTED_MODALITIES or { CT = true }

-- Orthanc series ID -> number of its instances already sent. In memory: after an Orthanc restart a series
-- that gains instances is sent whole again, which the plugin tolerates (duplicates are harmless).
local routedInstanceCount = {}

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local toSend = {}
  local ours = 0
  for _, s in ipairs(series) do
    local t = s['MainDicomTags'] or {}
    local count = #(s['Instances'] or {})
    if t['Manufacturer'] == ICH_PLUGIN_MANUFACTURER then
      ours = ours + 1
    elseif ICH_ROUTED_MODALITIES[t['Modality'] or ''] and routedInstanceCount[s['ID']] ~= count then
      table.insert(toSend, s['ID'])
      routedInstanceCount[s['ID']] = count
    end
  end

  if #toSend == 0 then
    print('ich-triage: study ' .. studyId .. ' stable, nothing new to route (' .. ours .. ' result series)')
    return
  end

  print('ich-triage: routing ' .. #toSend .. ' series of study ' .. studyId .. ' to ' .. ICH_MODALITY)
  local ok, err = pcall(RestApiPost, '/modalities/' .. ICH_MODALITY .. '/store',
                        DumpJson({ Resources = toSend, Synchronous = true }, true))
  if not ok then
    -- Forget the failed series: the study is routed again when it next becomes stable (new instances, or
    -- a re-send by the modality).
    for _, id in ipairs(toSend) do
      routedInstanceCount[id] = nil
    end
    print('ich-triage: routing study ' .. studyId .. ' failed: ' .. tostring(err))
  end
end
