-- The trigger that keeps moderation_audit append-only.
-- As revision 0003 left it: that revision carries this text inline (it predates db/sql/); the text
-- here is pg_get_functiondef() of a database migrated to it, so re-applying it changes nothing.
CREATE OR REPLACE FUNCTION public.moderation_audit_is_append_only()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
        BEGIN
            RAISE EXCEPTION 'moderation_audit is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $function$;
