"""EHR connectors (HL7 v2, FHIR R4, OMOP CDM, synthetic). Each registers under ``screener.connectors``."""
